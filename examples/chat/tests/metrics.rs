//! The chat's `/metrics` (issue 14), as an operator's Prometheus scrapes it: sessions on two
//! transports, messages both ways, then the text format read back over HTTP.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Chat, sample, scrape};
use serde_json::json;
use switchboard_client::{Client, Message, Transport};

#[tokio::test]
async fn the_chat_serves_its_metrics_in_the_prometheus_format() {
    let chat = Chat::start(&[], "info").await;
    let base = format!("http://{}/realtime", chat.addr);
    let http = reqwest::Client::new();

    let mut people = Vec::new();
    for (nick, transport) in [("민수", Transport::WebSocket), ("🦀", Transport::LongPoll)] {
        let client = Client::builder(&base)
            .transport(transport)
            .auth(json!({ "nick": nick }))
            .connect()
            .await
            .unwrap();
        people.push(client);
    }
    people[0]
        .send(Message::json(json!({ "text": "안녕하세요 👋" })).with_event("say"))
        .unwrap();
    for person in &mut people {
        loop {
            let message = person
                .recv_timeout(Duration::from_secs(10))
                .await
                .unwrap()
                .expect("the line did not arrive");
            if message.event() == Some("line") {
                break;
            }
        }
    }

    let text = scrape(&http, &chat.addr).await;
    assert!(text.contains("# TYPE switchboard_sessions gauge"), "{text}");
    assert!(
        text.contains("# HELP switchboard_messages_out_total"),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"switchboard_sessions{transport="websocket"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"switchboard_sessions{transport="longpoll"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"switchboard_sessions_opened_total{origin="client"}"#
        ),
        Some(2.0),
        "{text}"
    );
    // The WebSocket client sent its line; both heard it (and the chat's welcome and room).
    assert_eq!(
        sample(
            &text,
            r#"switchboard_messages_in_total{transport="websocket"}"#
        ),
        Some(1.0),
        "{text}"
    );
    for transport in ["websocket", "longpoll"] {
        let out = format!(r#"switchboard_messages_out_total{{transport="{transport}"}}"#);
        assert!(sample(&text, &out).unwrap_or(0.0) >= 2.0, "{out}: {text}");
    }
    // No session id or key in any label.
    for person in &people {
        assert!(!text.contains(person.sid()), "a session id in the metrics");
    }

    people.remove(0).close().await.unwrap();
    let closed = r#"switchboard_sessions_ended_total{reason="client_closed"}"#;
    let mut ended = None;
    for _ in 0..100 {
        ended = sample(&scrape(&http, &chat.addr).await, closed);
        if ended == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ended, Some(1.0));
}
