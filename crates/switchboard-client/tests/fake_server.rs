//! The high-level client against a scripted fake WebSocket server: deduplication, acknowledgement
//! and resending after a resume, without depending on the real server.
#![allow(clippy::unwrap_used, clippy::result_large_err)] // the handshake callback type is tungstenite's

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use switchboard_client::{Client, ClientFrame, Message, ServerFrame, Transport};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const SID: &str = "0123456789abcdef0123456789abcdef";

fn open(resumed: bool, ack: u64) -> String {
    json!({"t":"open","v":1,"sid":SID,"resumed":resumed,"ack":ack,"ping":25000,"hold":20000,
           "resume":30000,"max_message":65536,"max_body":1048576,"future_field":"ignored"})
    .to_string()
}

fn msg(seq: u64, text: &str) -> String {
    ServerFrame::Msg {
        seq,
        message: Message::text(text),
    }
    .to_json()
    .to_string()
}

/// The attach number (`att`) of a request's query.
fn att(query: &str) -> Option<u64> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("att="))
        .and_then(|att| att.parse().ok())
}

/// Reads client frames until `pred` holds for the frames read so far, returning them.
async fn read_until<S>(ws: &mut S, pred: impl Fn(&[ClientFrame]) -> bool) -> Vec<ClientFrame>
where
    S: futures_util::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    let mut seen = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let WsMessage::Text(t) = m {
            seen.push(ClientFrame::parse(t.as_str()).unwrap());
            if pred(&seen) {
                return seen;
            }
        }
    }
}

#[tokio::test]
async fn dedup_ack_and_resend_after_resume() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/rt", listener.local_addr().unwrap());

    let server = tokio::spawn(async move {
        // first connection: a new session
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_hdr_async(
            tcp,
            |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                let q = req.uri().query().unwrap_or("");
                assert!(
                    req.uri().path() == "/rt/ws" && q.starts_with("v=1"),
                    "{}",
                    req.uri()
                );
                assert!(q.contains("auth=%7B%22token%22%3A%22t%C3%B8k%22%7D"), "{q}");
                assert_eq!(att(q), Some(1), "{q}");
                Ok(resp)
            },
        )
        .await
        .unwrap();
        ws.send(WsMessage::text(open(false, 0))).await.unwrap();
        for f in [
            msg(1, "a"),
            msg(2, "b"),
            msg(1, "a"),
            msg(2, "b"),
            msg(3, "c"),
        ] {
            ws.feed(WsMessage::text(f)).await.unwrap();
        }
        ws.flush().await.unwrap();
        // the client acknowledges 3 and sends its messages 1..=3
        let frames = read_until(&mut ws, |fs| {
            fs.contains(&ClientFrame::Ack(3))
                && fs
                    .iter()
                    .any(|f| matches!(f, ClientFrame::Msg { seq: 3, .. }))
        })
        .await;
        let seqs: Vec<u64> = frames
            .iter()
            .filter_map(|f| match f {
                ClientFrame::Msg { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
        ws.send(WsMessage::text(json!({"t":"ack","a":1}).to_string()))
            .await
            .unwrap();
        ws.send(WsMessage::text(json!({"t":"ping"}).to_string()))
            .await
            .unwrap();
        let _ = read_until(&mut ws, |fs| fs.contains(&ClientFrame::Pong)).await;
        // die without a close frame
        drop(ws);

        // second connection: the resume, with sid and ack=3
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_hdr_async(
            tcp,
            |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                let q = req.uri().query().unwrap_or("");
                assert!(
                    q.contains(&format!("sid={SID}")) && q.contains("ack=3") && !q.contains("auth"),
                    "{q}"
                );
                // Every transport request carries a higher attach number than the one before.
                assert_eq!(att(q), Some(2), "{q}");
                Ok(resp)
            },
        )
        .await
        .unwrap();
        // the server got client messages up to 2: the client must resend 3 only
        ws.send(WsMessage::text(open(true, 2))).await.unwrap();
        ws.send(WsMessage::text(msg(3, "c"))).await.unwrap();
        ws.send(WsMessage::text(msg(4, "d"))).await.unwrap();
        let frames = read_until(&mut ws, |fs| {
            fs.iter()
                .any(|f| matches!(f, ClientFrame::Msg { seq: 3, .. }))
        })
        .await;
        assert!(
            !frames
                .iter()
                .any(|f| matches!(f, ClientFrame::Msg { seq: 1 | 2, .. })),
            "{frames:?}"
        );
        ws.send(WsMessage::text(json!({"t":"ack","a":3}).to_string()))
            .await
            .unwrap();
        // the client closes the session
        let _ = read_until(&mut ws, |fs| fs.contains(&ClientFrame::Close)).await;
        ws.send(WsMessage::text(
            json!({"t":"close","code":4001,"reason":"client_closed"}).to_string(),
        ))
        .await
        .unwrap();
        let _ = ws.close(None).await;
    });

    let mut client = Client::builder(&base)
        .transport(Transport::WebSocket)
        .auth(json!({"token": "tøk"}))
        .connect()
        .await
        .unwrap();
    assert_eq!(client.sid(), SID);
    for i in 1..=3 {
        assert_eq!(client.send(Message::json(Value::from(i))).unwrap(), i);
    }
    let mut got = Vec::new();
    while got.len() < 4 {
        let m = client
            .recv_timeout(Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        got.push(m.as_text().unwrap().to_owned());
    }
    assert_eq!(got, ["a", "b", "c", "d"]);
    client.wait_acked(Duration::from_secs(5)).await.unwrap();
    let stats = client.stats();
    assert_eq!(stats.received, 4);
    assert_eq!(stats.duplicates_dropped, 3);
    assert_eq!(stats.reconnects, 1);
    assert_eq!(stats.resent, 1);
    client.close().await.unwrap();
    server.await.unwrap();
}
