//! What an operator configures: a Redis password, TLS (`rediss://`) with a private certificate
//! authority, and a prefix so that several applications share one Redis (issue 10, item 7).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Node, Redis};
use switchboard_client::{Client, Transport};
use switchboard_redis::RedisBackend;
use tokio::sync::mpsc;

/// Two nodes on `backends`; a client on each, in one room; a broadcast from node 1 reaches both,
/// and a poll of node 0's session through node 1 is forwarded.
async fn two_nodes_talk(backends: [RedisBackend; 2]) {
    let (sessions_tx, mut sessions) = mpsc::channel(16);
    let [first, second] = backends;
    let nodes = [
        Node::with_backend(first, sessions_tx.clone(), |builder| builder).await,
        Node::with_backend(second, sessions_tx.clone(), |builder| builder).await,
    ];
    let mut a = Client::connect(&nodes[0].base, Transport::WebSocket)
        .await
        .unwrap();
    let session_a = sessions.recv().await.unwrap();
    let mut b = Client::connect(&nodes[1].base, Transport::LongPoll)
        .await
        .unwrap();
    let session_b = sessions.recv().await.unwrap();
    session_a.join("room").unwrap();
    session_b.join("room").unwrap();
    for node in &nodes {
        node.realtime.hub().flush().await.unwrap();
    }
    let hub = nodes[1].realtime.hub();
    hub.to("room")
        .send(&switchboard::Message::text("보안 🔐"))
        .unwrap();
    for client in [&mut a, &mut b] {
        let message = tokio::time::timeout(Duration::from_secs(10), client.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(message.as_text(), Some("보안 🔐"));
    }
    // A session opened on node 0, polled through node 1: forwarded to node 0.
    let http = reqwest::Client::new();
    let sid = common::open(&http, &nodes[0].base).await;
    let polled = sessions.recv().await.unwrap();
    polled
        .send(switchboard::Message::text("forwarded"))
        .unwrap();
    let frames: serde_json::Value = http
        .get(format!("{}/poll?v=1&sid={}&wait=0", nodes[1].base, sid))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(frames[0]["d"], "forwarded", "{frames}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_with_a_password() {
    let redis = Redis::start_with(vec!["--requirepass".into(), "s3cr3t 비밀".into()], false).await;
    let url = format!(
        "redis://:s3cr3t%20%EB%B9%84%EB%B0%80@127.0.0.1:{}",
        redis.port
    );
    let backends = [
        RedisBackend::connect(url.clone()).await.unwrap(),
        RedisBackend::connect(url).await.unwrap(),
    ];
    two_nodes_talk(backends).await;
    // A wrong password is refused at once, with an error that says so.
    let wrong = format!("redis://:wrong@127.0.0.1:{}", redis.port);
    let err = tokio::time::timeout(Duration::from_secs(10), RedisBackend::connect(wrong))
        .await
        .expect("a wrong password must fail, not hang")
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("pass"), "{err}");
}

/// A certificate authority and a certificate for 127.0.0.1 signed by it, made with openssl in
/// `dir`: returns the CA certificate (PEM).
fn certificates(dir: &Path) -> Vec<u8> {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl must be installed");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "redis.key",
        "-out",
        "redis.csr",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "redis.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "redis.crt",
    ]);
    std::fs::read(dir.join("ca.crt")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_over_tls_with_a_private_certificate_authority() {
    let dir = std::env::temp_dir().join(format!("switchboard-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = certificates(&dir);
    let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let redis = Redis::start_with(
        vec![
            "--tls-cert-file".into(),
            file("redis.crt"),
            "--tls-key-file".into(),
            file("redis.key"),
            "--tls-ca-cert-file".into(),
            file("ca.crt"),
            "--tls-auth-clients".into(),
            "no".into(),
        ],
        true,
    )
    .await;
    assert!(redis.url.starts_with("rediss://"));
    let connect = |ca: Vec<u8>| {
        RedisBackend::builder(redis.url.clone())
            .tls_root_certificates(ca)
            .connect()
    };
    let backends = [
        connect(ca.clone()).await.unwrap(),
        connect(ca).await.unwrap(),
    ];
    two_nodes_talk(backends).await;
    // Without the CA, the server's certificate is not trusted: refused, not ignored.
    let untrusted = tokio::time::timeout(
        Duration::from_secs(10),
        RedisBackend::connect(redis.url.clone()),
    )
    .await
    .expect("an untrusted certificate must fail, not hang");
    assert!(untrusted.is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_applications_share_one_redis_under_their_prefixes() {
    let redis = Redis::start().await;
    let (tx, mut sessions) = mpsc::channel(16);
    let mut nodes = Vec::new();
    for prefix in ["app-one", "app-two"] {
        let backend = RedisBackend::builder(redis.url.clone())
            .prefix(prefix)
            .connect()
            .await
            .unwrap();
        assert_eq!(backend.prefix(), prefix);
        nodes.push(Node::with_backend(backend, tx.clone(), |builder| builder).await);
    }
    let mut one = Client::connect(&nodes[0].base, Transport::WebSocket)
        .await
        .unwrap();
    sessions.recv().await.unwrap().join("lobby").unwrap();
    let mut two = Client::connect(&nodes[1].base, Transport::WebSocket)
        .await
        .unwrap();
    sessions.recv().await.unwrap().join("lobby").unwrap();
    for node in &nodes {
        node.realtime.hub().flush().await.unwrap();
    }
    // Same room name, same channel name but for the prefix: each application hears only itself.
    nodes[0]
        .realtime
        .hub()
        .to("lobby")
        .send(&switchboard::Message::text("one"))
        .unwrap();
    nodes[1]
        .realtime
        .hub()
        .to("lobby")
        .send(&switchboard::Message::text("two"))
        .unwrap();
    assert_eq!(common::next_text(&mut one).await, "one");
    assert_eq!(common::next_text(&mut two).await, "two");
    assert_eq!(
        one.recv_timeout(Duration::from_millis(200)).await.unwrap(),
        None
    );
    assert_eq!(
        two.recv_timeout(Duration::from_millis(200)).await.unwrap(),
        None
    );
    // And a session id of one application is unknown to the other.
    let http = reqwest::Client::new();
    let answer = http
        .get(format!(
            "{}/poll?v=1&sid={}&wait=0",
            nodes[1].base,
            one.sid()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
}

/// A writer for the test's tracing subscriber: everything goes into one shared buffer.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_a_session_handler_logs_names_its_node() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // Global: the session's handler runs in a task of its own, on any worker thread. (Other tests
    // of this file log into the same buffer; this one looks for its own line.)
    tracing::subscriber::set_global_default(subscriber)
        .expect("this test sets the global tracing subscriber (run it without RUST_LOG)");
    let redis = Redis::start().await;
    let backend = RedisBackend::connect(redis.url.clone()).await.unwrap();
    let realtime = switchboard::Switchboard::builder().backend(backend).build();
    let node = realtime.node_id().unwrap().to_string();
    let app = axum::Router::new().nest(
        "/rt",
        realtime.router(|session| async move {
            tracing::info!("handler says hello");
            session.closed().await;
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    let _client = Client::connect(&format!("http://{addr}/rt"), Transport::WebSocket)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
        if let Some(line) = text
            .lines()
            .find(|line| line.contains("handler says hello"))
        {
            assert!(line.contains(&format!("node={node}")), "{line}");
            assert!(line.contains("session{key="), "{line}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
