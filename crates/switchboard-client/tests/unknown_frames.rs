//! The high-level client ignores server frames of types protocol version 1 does not define
//! (protocol §3), on WebSocket (in batches, alone, before the open frame) and in poll and POST
//! answers, against scripted fake servers on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use switchboard_client::{Client, ClientFrame, Message, Transport};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const SID: &str = "0123456789abcdef0123456789abcdef";

fn open_frame() -> Value {
    json!({"t":"open","v":1,"sid":SID,"resumed":false,"ack":0,"ping":25000,"hold":20000,
           "resume":30000,"max_message":65536,"max_body":1048576})
}

async fn recv_texts(client: &mut Client, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let m = client
            .recv_timeout(Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        got.push(m.as_text().unwrap().to_owned());
    }
    got
}

#[tokio::test]
async fn the_client_ignores_unknown_frame_types_on_websocket() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/rt", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        for text in [
            // before the open frame, in a batch of its own
            json!([{"t":"hello","s":"not a number"}]),
            json!([open_frame()]),
            json!([{"t":"m","s":1,"d":"a"},{"t":"later","code":[1]},{"t":"m","s":2,"d":"b"}]),
            // a single frame, not in an array
            json!({"t":"future","a":"x"}),
            json!({"t":"m","s":3,"d":"c"}),
        ] {
            ws.send(WsMessage::text(text.to_string())).await.unwrap();
        }
        // The client acknowledges all three and sends its message; it never closes the socket
        // over the unknown frames.
        let mut acked = false;
        let mut sent = false;
        while !(acked && sent) {
            let Some(Ok(WsMessage::Text(text))) = ws.next().await else {
                panic!("the client left");
            };
            match ClientFrame::parse(text.as_str()).unwrap() {
                ClientFrame::Ack(3) => acked = true,
                ClientFrame::Msg { seq: 1, .. } => {
                    sent = true;
                    ws.send(WsMessage::text(
                        json!([{"t":"ack","a":1},{"t":"later"}]).to_string(),
                    ))
                    .await
                    .unwrap();
                }
                _ => {}
            }
        }
        loop {
            let Some(Ok(WsMessage::Text(text))) = ws.next().await else {
                panic!("the client left");
            };
            if ClientFrame::parse(text.as_str()).unwrap() == ClientFrame::Close {
                break;
            }
        }
        let close = json!([{"t":"close","code":4001,"reason":"client_closed"}]);
        ws.send(WsMessage::text(close.to_string())).await.unwrap();
        let _ = ws.close(None).await;
    });

    let mut client = Client::builder(&base)
        .transport(Transport::WebSocket)
        .connect()
        .await
        .unwrap();
    assert_eq!(client.sid(), SID);
    client.send(Message::text("up")).unwrap();
    assert_eq!(recv_texts(&mut client, 3).await, ["a", "b", "c"]);
    client.wait_acked(Duration::from_secs(5)).await.unwrap();
    assert_eq!(client.stats().reconnects, 0);
    client.close().await.unwrap();
    server.await.unwrap();
}

/// Reads one HTTP/1.1 request: the request line and the body; `None` if the client gave up on the
/// connection before sending it all (it may drop a poll it no longer needs).
async fn read_request(tcp: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tcp.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or(0);
    while data.len() < head_end + length {
        let n = tcp.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    }
    let line = head.lines().next().unwrap().to_owned();
    Some((line, data[head_end..head_end + length].to_vec()))
}

async fn respond(tcp: &mut TcpStream, body: &Value) {
    let body = body.to_string();
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(answer.as_bytes()).await.unwrap();
    let _ = tcp.shutdown().await;
}

#[tokio::test]
async fn the_client_ignores_unknown_frame_types_in_poll_and_post_answers() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/rt", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let mut polls = 0;
        let mut acked = 0;
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let Some((line, body)) = read_request(&mut tcp).await else {
                continue;
            };
            if line.starts_with("POST /rt/open") {
                respond(&mut tcp, &open_frame()).await;
            } else if line.starts_with("GET /rt/poll") {
                polls += 1;
                let answer = if polls == 1 {
                    json!([{"t":"future","s":"x"},{"t":"m","s":1,"d":"a"},{"t":"later"}])
                } else {
                    // nothing more to send: a short hold, then an empty answer
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    json!([])
                };
                respond(&mut tcp, &answer).await;
            } else if line.starts_with("POST /rt/poll") {
                let frames: Vec<Value> = serde_json::from_slice(&body).unwrap();
                let frames: Vec<ClientFrame> = frames
                    .iter()
                    .map(|f| ClientFrame::from_json(f).unwrap())
                    .collect();
                for frame in &frames {
                    if let ClientFrame::Msg { seq, .. } = frame {
                        acked = acked.max(*seq);
                    }
                }
                let mut answer = vec![json!({"t":"later","a":"x"}), json!({"t":"ack","a":acked})];
                let closing = frames.contains(&ClientFrame::Close);
                if closing {
                    answer.push(json!({"t":"close","code":4001,"reason":"client_closed"}));
                }
                answer.push(json!({"t":"future"}));
                respond(&mut tcp, &Value::Array(answer)).await;
                if closing {
                    return;
                }
            } else {
                panic!("unexpected request {line}");
            }
        }
    });

    let mut client = Client::builder(&base)
        .transport(Transport::LongPoll)
        .connect()
        .await
        .unwrap();
    client.send(Message::text("up")).unwrap();
    assert_eq!(recv_texts(&mut client, 1).await, ["a"]);
    client.wait_acked(Duration::from_secs(5)).await.unwrap();
    client.close().await.unwrap();
    server.await.unwrap();
}
