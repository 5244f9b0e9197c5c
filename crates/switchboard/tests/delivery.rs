//! Exactly-once, in-order delivery in both directions while the transport is switched (among
//! WebSocket, Server-Sent Events, long and short polling) and dropped mid-stream (DESIGN.md guarantees 1, 2, 3 and 5 on the server side), with an
//! independent client (`switchboard-client`) written from docs/protocol.md.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{TestServer, start_default};
use switchboard::Switchboard;
use switchboard_client::raw::Http;
use switchboard_client::{Client, ClientFrame, Message as ClientMessage, Transport};

const COUNT: usize = 10_000;
const SHORT_POLL: Transport = Transport::ShortPoll {
    interval: Duration::from_millis(5),
};

/// Message `i` of a stream: mostly Korean and emoji text, every seventh one binary.
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

fn text(i: usize) -> String {
    format!("{i} 안녕하세요 🎉 #{}", "가".repeat(i % 13))
}

fn payload_bytes(i: usize) -> Vec<u8> {
    let mut bytes = (i as u32).to_be_bytes().to_vec();
    bytes.extend((0..(i % 300)).map(|b| (b * 31 % 256) as u8));
    bytes
}

enum Step {
    Switch(Transport),
    Drop,
}

/// What happens to the client's transport when the stream reaches a message number.
fn plan() -> Vec<(usize, Step)> {
    vec![
        (1_000, Step::Switch(Transport::Sse)),
        (1_500, Step::Switch(Transport::LongPoll)),
        (2_200, Step::Switch(Transport::Sse)),
        (2_600, Step::Drop),
        (3_000, Step::Switch(SHORT_POLL)),
        (4_000, Step::Switch(Transport::Sse)),
        (5_000, Step::Switch(Transport::WebSocket)),
        (6_500, Step::Drop),
        (7_200, Step::Switch(Transport::Sse)),
        (8_000, Step::Drop),
        (8_500, Step::Switch(Transport::WebSocket)),
        (9_000, Step::Switch(Transport::LongPoll)),
        (9_500, Step::Drop),
    ]
}

async fn apply(client: &mut Client, step: &Step) {
    match step {
        Step::Switch(transport) => client.switch(*transport).await.unwrap(),
        Step::Drop => client.drop_transport_abruptly().await.unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_to_the_client_survive_switches_and_drops() {
    let mut server = start_default().await;
    let mut client = Client::connect(&server.base, Transport::WebSocket)
        .await
        .unwrap();
    let session = server.next_session().await;
    let producer = tokio::spawn({
        let session = session.clone();
        async move {
            for i in 0..COUNT {
                // Stay well inside the buffer limit: the client acknowledges as it goes.
                while session.buffered().0 >= 2_000 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                session.send(server_message(i)).unwrap();
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
    });
    let mut plan = plan().into_iter().peekable();
    for i in 0..COUNT {
        if plan.peek().is_some_and(|(at, _)| *at == i) {
            let (_, step) = plan.next().unwrap();
            apply(&mut client, &step).await;
        }
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
    assert_eq!(stats.received, COUNT as u64);
    assert_eq!(stats.gaps, 0);
    // The switches and drops did make the server send some messages twice; the client dropped
    // them by sequence number.
    assert!(stats.reconnects >= 3, "{stats:?}");
    // Everything was acknowledged in the end and the buffer trimmed.
    assert!(common::eventually(Duration::from_secs(10), || session.buffered().0 == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_from_the_client_survive_switches_drops_and_retried_posts() {
    let mut server = TestServer::start(Switchboard::builder().build()).await;
    let mut client = Client::connect(&server.base, Transport::WebSocket)
        .await
        .unwrap();
    let session = server.next_session().await;
    let consumer = tokio::spawn({
        let session = session.clone();
        async move {
            for i in 0..COUNT {
                let message = tokio::time::timeout(Duration::from_secs(20), session.recv())
                    .await
                    .unwrap_or_else(|_| panic!("message {i} did not arrive"))
                    .unwrap();
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
            // Nothing more: no duplicate slipped through.
            assert!(
                tokio::time::timeout(Duration::from_millis(300), session.recv())
                    .await
                    .is_err()
            );
        }
    });
    let sender = client.sender();
    let mut plan = plan().into_iter().peekable();
    let http = Http::new(&server.base);
    let mut retried = false;
    for i in 0..COUNT {
        if plan.peek().is_some_and(|(at, _)| *at == i) {
            let (_, step) = plan.next().unwrap();
            apply(&mut client, &step).await;
        }
        sender.send(client_message(i)).unwrap();
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Halfway, replay a batch the server has already delivered, as a client would whose
        // POST answer was lost: the server acknowledges it and delivers nothing.
        if !retried && i >= 4_000 && client.server_ack() >= 1_000 {
            let replay: Vec<ClientFrame> = (0..200)
                .map(|j| ClientFrame::msg(j as u64 + 1, client_message(j)))
                .collect();
            // The client's own POST may be in flight: the server then answers 429 (one POST per
            // session at a time, docs/protocol.md §5.5) and, like any client, we try again.
            let mut attempts = 0;
            let answer = loop {
                match http.post(client.sid(), &replay).await {
                    Err(err) if err.http_status() == Some(429) && attempts < 500 => {
                        attempts += 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    other => break other.unwrap(),
                }
            };
            assert!(
                answer.iter().any(
                    |frame| matches!(frame, switchboard_client::ServerFrame::Ack(a) if *a >= 1_000)
                ),
                "{answer:?}"
            );
            retried = true;
        }
    }
    assert!(retried);
    client.wait_acked(Duration::from_secs(30)).await.unwrap();
    consumer.await.unwrap();
    assert_eq!(client.server_ack(), COUNT as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echo_round_trip_works_on_every_transport() {
    let server = start_default().await;
    let base = server.base.clone();
    let mut sessions = server.sessions;
    tokio::spawn(async move {
        while let Some(session) = sessions.recv().await {
            tokio::spawn(async move {
                while let Some(message) = session.recv().await {
                    session.send(message).unwrap();
                }
            });
        }
    });
    for transport in [
        Transport::WebSocket,
        Transport::Sse,
        Transport::LongPoll,
        SHORT_POLL,
    ] {
        let mut client = Client::connect(&base, transport).await.unwrap();
        for i in 0..50 {
            client.send(client_message(i)).unwrap();
        }
        for i in 0..50 {
            let message = tokio::time::timeout(Duration::from_secs(10), client.recv())
                .await
                .unwrap()
                .unwrap();
            match message.as_text() {
                Some(text_payload) => assert_eq!(text_payload, text(i), "{transport:?}"),
                None => assert_eq!(message.as_binary().unwrap(), &payload_bytes(i)[..]),
            }
        }
        client.close().await.unwrap();
    }
}
