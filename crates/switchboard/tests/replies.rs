//! Replies to messages (issue 15, `docs/protocol.md` §3.1): a client sends a message as a request
//! (`q`), the server's handler answers that one message with [`Session::reply`] (`p`), over the
//! same ordered, exactly-once channel, so on every transport, and across a transport switch while
//! the reply is on its way.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{TEXTS, TestServer, binary_payload};
use switchboard::{SendError, Session, Switchboard};
use switchboard_client::{Client, Message, Transport};

const TRANSPORTS: [Transport; 4] = [
    Transport::WebSocket,
    Transport::Sse,
    Transport::LongPoll,
    Transport::ShortPoll {
        interval: Duration::from_millis(20),
    },
];

/// A server whose handler answers every request with its payload reversed (text) or as is
/// (binary), and ignores other messages.
async fn answering_server() -> TestServer {
    TestServer::start_with(Switchboard::builder().build(), |listener, app| async move {
        axum::serve(listener, app).await.unwrap();
    })
    .await
}

async fn answer_all(session: Session) {
    while let Some(message) = session.recv().await {
        if message.request_id().is_none() {
            continue;
        }
        let reply = match message.as_text() {
            Some(text) => switchboard::Message::text(text.chars().rev().collect::<String>()),
            None => switchboard::Message::binary(message.as_bytes().unwrap().clone()),
        };
        session.reply(&message, reply).unwrap();
    }
}

/// The next message, which must come within 10 s.
async fn next(client: &mut Client) -> Message {
    client
        .recv_timeout(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("no message within 10 s")
}

#[tokio::test]
async fn every_transport_carries_requests_and_their_replies() {
    let mut server = answering_server().await;
    for transport in TRANSPORTS {
        let mut client = Client::connect(&server.base, transport).await.unwrap();
        let session = server.next_session().await;
        tokio::spawn(answer_all(session));
        // Several in flight at once, an ordinary message among them; replies come in order.
        for (i, text) in TEXTS.iter().enumerate() {
            let id = 100 + i as u64;
            client
                .send(Message::text(text).with_event("ask").with_request(id))
                .unwrap();
        }
        client.send(Message::text("not a request")).unwrap();
        client
            .send(Message::binary(binary_payload()).with_request(7))
            .unwrap();
        for (i, text) in TEXTS.iter().enumerate() {
            let reply = next(&mut client).await;
            assert_eq!(reply.reply_to, Some(100 + i as u64), "{transport:?}");
            let reversed: String = text.chars().rev().collect();
            assert_eq!(reply.as_text(), Some(reversed.as_str()), "{transport:?}");
        }
        let reply = next(&mut client).await;
        assert_eq!(reply.reply_to, Some(7));
        assert_eq!(reply.as_binary(), Some(&binary_payload()[..]));
        client.close().await.unwrap();
    }
}

#[tokio::test]
async fn a_reply_pending_across_a_websocket_drop_and_a_switch_to_long_polling_arrives_once() {
    let mut server = answering_server().await;
    let mut client = Client::connect(&server.base, Transport::WebSocket)
        .await
        .unwrap();
    let session = server.next_session().await;
    client
        .send(Message::text("질문 🤔").with_request(1))
        .unwrap();
    let request = tokio::time::timeout(Duration::from_secs(10), session.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(request.request_id(), Some(1));
    // The client loses its socket, then moves to long polling, all before the answer is sent.
    client.drop_transport_abruptly().await.unwrap();
    client.switch(Transport::LongPoll).await.unwrap();
    session.reply(&request, "답 ✅").unwrap();
    let reply = next(&mut client).await;
    assert_eq!((reply.reply_to, reply.as_text()), (Some(1), Some("답 ✅")));
    // Exactly once: nothing else comes, and the request reached the application once.
    assert_eq!(
        client
            .recv_timeout(Duration::from_millis(300))
            .await
            .unwrap(),
        None
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), session.recv())
            .await
            .is_err(),
        "the request was delivered again"
    );
    // And the same with the answer sent while the WebSocket is down.
    client
        .send(Message::text("두 번째").with_request(2))
        .unwrap();
    let request = tokio::time::timeout(Duration::from_secs(10), session.recv())
        .await
        .unwrap()
        .unwrap();
    client.switch(Transport::WebSocket).await.unwrap();
    client.drop_transport_abruptly().await.unwrap();
    session.reply(&request, "두 번째 답").unwrap();
    let reply = next(&mut client).await;
    assert_eq!(reply.reply_to, Some(2));
    assert_eq!(
        client
            .recv_timeout(Duration::from_millis(300))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn replying_to_a_message_that_is_not_a_request_sends_nothing() {
    let mut server = answering_server().await;
    let mut client = Client::connect(&server.base, Transport::LongPoll)
        .await
        .unwrap();
    let session = server.next_session().await;
    client.send(Message::text("just saying")).unwrap();
    let message = session.recv().await.unwrap();
    assert_eq!(message.request_id(), None);
    assert_eq!(session.reply(&message, "?"), Err(SendError::NotARequest));
    // A request left unanswered: no reply comes (the JavaScript client's time-out then fails
    // its promise), and the session goes on.
    client
        .send(Message::text("unanswered").with_request(9))
        .unwrap();
    let unanswered = session.recv().await.unwrap();
    assert_eq!(unanswered.request_id(), Some(9));
    assert_eq!(
        client
            .recv_timeout(Duration::from_millis(300))
            .await
            .unwrap(),
        None
    );
    session.send("still here").unwrap();
    let message = next(&mut client).await;
    assert_eq!(
        (message.as_text(), message.reply_to),
        (Some("still here"), None)
    );
}

#[tokio::test]
async fn a_request_id_out_of_range_is_a_malformed_frame() {
    let server = answering_server().await;
    let http = reqwest::Client::new();
    let sid = common::open(&http, &server.base).await;
    for bad in ["0", "9007199254740992", "-1", "\"1\""] {
        let body = format!(r#"[{{"t":"m","s":1,"q":{bad},"d":"x"}}]"#);
        let (status, answer) = common::post(&http, &server.base, &sid, body).await;
        assert_eq!(status, 400, "q = {bad}: {answer}");
        assert_eq!(answer["error"], "malformed_frame", "q = {bad}");
    }
}
