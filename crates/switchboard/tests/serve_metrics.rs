//! The metrics of `switchboard::serve` (issue 14), which go to the global recorder: connections
//! open, idle ones shed to make room, and new ones refused with `503` when none is idle. One test
//! in its own binary, so that nothing else counts into the global recorder meanwhile.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::TestServer;
use metrics_exporter_prometheus::PrometheusBuilder;
use switchboard::Switchboard;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// Waits (at most 5 s) until `name` reads `want`; returns what it read last.
async fn until(scrape: &impl Fn() -> String, name: &str, want: f64) -> f64 {
    let mut read = value(&scrape(), name);
    for _ in 0..250 {
        if read == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        read = value(&scrape(), name);
    }
    read
}

#[tokio::test]
async fn connections_open_shed_and_refused_are_counted() {
    let handle = PrometheusBuilder::new().install_recorder().unwrap();
    let scrape = || handle.render();

    // Idle connections (no request sent) up to 15/16 of the limit of 16, then one more: the two
    // idle longest are closed to make room (down to 7/8).
    let server = TestServer::start_served(Switchboard::builder().build(), |serve| {
        serve.max_connections(16)
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..15 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    assert_eq!(
        until(&scrape, "switchboard_connections_open", 15.0).await,
        15.0
    );
    idle.push(TcpStream::connect(server.addr).await.unwrap());
    assert_eq!(
        until(&scrape, "switchboard_connections_shed_total", 2.0).await,
        2.0
    );
    assert_eq!(
        until(&scrape, "switchboard_connections_open", 14.0).await,
        14.0
    );
    drop(idle);
    assert_eq!(
        until(&scrape, "switchboard_connections_open", 0.0).await,
        0.0
    );

    // Every connection busy (WebSockets are never shed): the next one is refused.
    let server = TestServer::start_served(Switchboard::builder().build(), |serve| {
        serve.max_connections(2)
    })
    .await;
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let mut socket = server.ws("").await;
        assert_eq!(common::next_json(&mut socket).await["t"], "open");
        sockets.push(socket);
    }
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    let text = scrape();
    assert_eq!(
        value(&text, "switchboard_connections_refused_total"),
        1.0,
        "{text}"
    );
    assert_eq!(value(&text, "switchboard_connections_open"), 2.0, "{text}");
    // The core's metrics went to the global recorder too (no recorder of its own was given).
    assert!(
        value(&text, r#"switchboard_sessions{transport="websocket"}"#) == 2.0,
        "{text}"
    );
    drop(sockets);
}
