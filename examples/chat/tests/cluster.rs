//! The chat as a cluster of real processes (`chat --redis …`), behind a proxy that sends every
//! connection to the next node: what happens when a node dies (SIGKILL) and when one is
//! replaced gracefully (SIGTERM), with people talking all along (issue 10, items 4, 5 and 8).
#![allow(clippy::unwrap_used)]

#[path = "common/mod.rs"]
mod chat;
#[path = "../../../crates/switchboard-redis/tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Proxy, Redis, no_keep_alive};
use serde_json::{Value, json};
use switchboard_client::{Client, Error, Message, Transport};
use tokio::io::{AsyncBufReadExt, BufReader};

/// One chat node, a process of its own.
struct ChatNode {
    child: Child,
    addr: SocketAddr,
}

impl ChatNode {
    async fn start(redis: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat"))
            .args(["--redis", redis, "--addr", "127.0.0.1:0"])
            .env("RUST_LOG", "warn,chat=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = tokio::process::ChildStdout::from_std(child.stdout.take().unwrap()).unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(at) = line.find("chat on http://") {
                    let rest = &line[at + "chat on http://".len()..];
                    let addr: String = rest
                        .chars()
                        .take_while(|c| *c != ',' && !c.is_whitespace())
                        .collect();
                    return addr.parse::<SocketAddr>().unwrap();
                }
            }
            panic!("the chat exited before it listened");
        })
        .await
        .expect("the chat did not start within 30 s");
        // Keep reading, so that the node never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, addr }
    }

    /// SIGKILL: no goodbye, no handover.
    fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    /// SIGTERM, as a deploy does, and waits for the process to end (at most 30 s).
    async fn terminate(&mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        for _ in 0..3000 {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the chat did not stop within 30 s of SIGTERM");
    }
}

impl Drop for ChatNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One person in the chat, through the proxy.
struct Person {
    nick: String,
    client: Client,
    /// `line` texts received, in order.
    lines: Vec<String>,
    /// The last `joined` or `presence` member list received.
    members: Vec<String>,
}

const TRANSPORTS: [Transport; 3] = [
    Transport::WebSocket,
    Transport::LongPoll,
    Transport::ShortPoll {
        interval: Duration::from_millis(20),
    },
];

impl Person {
    async fn join(base: &str, nick: &str, transport: Transport) -> Self {
        let client = Client::builder(base)
            .transport(transport)
            .auth(json!({ "nick": nick }))
            .http_client(no_keep_alive())
            .connect()
            .await
            .unwrap();
        let mut person = Self {
            nick: nick.to_string(),
            client,
            lines: Vec::new(),
            members: Vec::new(),
        };
        // welcome, then joined (with the member list).
        while person.members.is_empty() {
            if let Err(err) = person.next(Duration::from_secs(10)).await {
                panic!("{nick} could not join: {err:?}");
            }
        }
        person
    }

    /// Says `text` in the room; `Err` once the session has ended.
    fn say(&self, text: &str) -> Result<(), Error> {
        self.client
            .send(Message::json(json!({ "text": text })).with_event("say"))
            .map(|_| ())
    }

    /// Takes the next event (recording lines and member lists); `Ok(false)` if none came.
    async fn next(&mut self, wait: Duration) -> Result<bool, Error> {
        let Some(message) = self.client.recv_timeout(wait).await? else {
            return Ok(false);
        };
        let data = message.as_json().cloned().unwrap_or(Value::Null);
        match message.event() {
            Some("line") => self.lines.push(data["text"].as_str().unwrap().to_string()),
            Some("joined") | Some("presence") => {
                self.members = data["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|nick| nick.as_str().unwrap().to_string())
                    .collect();
            }
            _ => {}
        }
        Ok(true)
    }
}

/// The lines of `nick` in `lines`, by number, in the order they came.
fn numbers_of(lines: &[String], nick: &str) -> Vec<usize> {
    lines
        .iter()
        .filter_map(|line| line.strip_prefix(&format!("{nick} #")))
        .map(|number| number.split(' ').next().unwrap().parse().unwrap())
        .collect()
}

struct ChatCluster {
    redis: Redis,
    nodes: Vec<ChatNode>,
    proxy: Proxy,
}

impl ChatCluster {
    async fn start(n: usize) -> Self {
        common::logs();
        let redis = Redis::start().await;
        let mut nodes = Vec::new();
        for _ in 0..n {
            nodes.push(ChatNode::start(&redis.url).await);
        }
        let proxy = Proxy::start(nodes.iter().map(|node| node.addr).collect()).await;
        Self {
            redis,
            nodes,
            proxy,
        }
    }

    fn base(&self) -> String {
        format!("http://{}/realtime", self.proxy.addr)
    }

    fn route_to_all(&self) {
        self.proxy
            .set_upstreams(self.nodes.iter().map(|node| node.addr).collect());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_traffic_resets_only_its_own_clients_and_presence_converges() {
    let mut cluster = ChatCluster::start(3).await;
    let base = cluster.base();
    let mut people = Vec::new();
    for i in 0..6 {
        let nick = format!("사람{i} 🙂");
        people.push(Person::join(&base, &nick, TRANSPORTS[i % 3]).await);
    }
    // Everyone talks for a while, then node 1 dies mid-conversation.
    let mut said: HashMap<String, usize> = HashMap::new();
    let mut reset_at: HashMap<String, Duration> = HashMap::new();
    let mut killed_at = None;
    for round in 0..60 {
        if round == 20 {
            cluster.nodes[1].kill();
            let alive = vec![cluster.nodes[0].addr, cluster.nodes[2].addr];
            cluster.proxy.set_upstreams(alive);
            killed_at = Some(tokio::time::Instant::now());
        }
        for person in &mut people {
            if reset_at.contains_key(&person.nick) {
                continue;
            }
            let n = said.entry(person.nick.clone()).or_default();
            let mut outcome = person
                .say(&format!("{} #{n} 안녕", person.nick))
                .map(|()| true);
            if outcome.is_ok() {
                *n += 1;
            }
            loop {
                if outcome.is_ok() {
                    outcome = person.next(Duration::from_millis(5)).await;
                }
                match outcome {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(ref err) => {
                        // The client of a dead node's session: it learns, and would start over.
                        let at = killed_at
                            .expect("a session ended before any node died")
                            .elapsed();
                        assert!(
                            matches!(
                                err,
                                Error::Http { status: 404, .. }
                                    | Error::WsClosed {
                                        code: Some(4404),
                                        ..
                                    }
                            ),
                            "{}: {err:?}",
                            person.nick
                        );
                        reset_at.insert(person.nick.clone(), at);
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give the dead node's clients until 5 s after the death to notice.
    while killed_at.unwrap().elapsed() < Duration::from_secs(6) {
        for person in &mut people {
            if reset_at.contains_key(&person.nick) {
                continue;
            }
            if let Err(err) = person.next(Duration::from_millis(20)).await {
                assert!(
                    matches!(
                        &err,
                        Error::Http { status: 404, .. }
                            | Error::WsClosed {
                                code: Some(4404),
                                ..
                            }
                    ),
                    "{err:?}"
                );
                reset_at.insert(person.nick.clone(), killed_at.unwrap().elapsed());
            }
        }
    }
    assert!(!reset_at.is_empty(), "no session lived on the killed node");
    assert!(
        reset_at.len() < people.len(),
        "every session was on the killed node"
    );
    for (nick, at) in &reset_at {
        assert!(
            *at <= Duration::from_secs(5),
            "{nick} learned of the death after {at:?}"
        );
    }
    // The survivors: everything every survivor said reached every survivor once, in order.
    let survivors: Vec<&mut Person> = people
        .iter_mut()
        .filter(|person| !reset_at.contains_key(&person.nick))
        .collect();
    let nicks: Vec<String> = survivors.iter().map(|person| person.nick.clone()).collect();
    let mut survivors = survivors;
    for person in survivors.iter_mut() {
        // Drain what is still on its way.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let complete = nicks
                .iter()
                .all(|nick| numbers_of(&person.lines, nick).len() >= said[nick]);
            if complete || tokio::time::Instant::now() > deadline {
                break;
            }
            person.next(Duration::from_millis(50)).await.unwrap();
        }
        for nick in &nicks {
            let numbers = numbers_of(&person.lines, nick);
            let expected: Vec<usize> = (0..said[nick]).collect();
            assert_eq!(
                numbers, expected,
                "{}'s lines as {} saw them",
                nick, person.nick
            );
        }
    }
    // Presence converges: someone new sees exactly the survivors (and themselves).
    let newcomer = Person::join(&base, "newcomer", Transport::WebSocket).await;
    let mut expected: Vec<String> = nicks.clone();
    expected.push("newcomer".into());
    expected.sort_by_key(|nick| nick.to_lowercase());
    assert_eq!(newcomer.members, expected);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_replaced_with_sigterm_hands_its_people_over_with_nothing_lost() {
    let mut cluster = ChatCluster::start(2).await;
    let base = cluster.base();
    let mut people = Vec::new();
    for i in 0..4 {
        people.push(Person::join(&base, &format!("Zoë{i}"), TRANSPORTS[i % 3]).await);
    }
    let mut said = vec![0usize; people.len()];
    for round in 0..80 {
        if round == 20 || round == 50 {
            // Replace one node, then the other: the load balancer stops sending it work, it
            // gets SIGTERM, and a fresh node takes its place.
            let at = if round == 20 { 0 } else { 1 };
            let other = cluster.nodes[1 - at].addr;
            cluster.proxy.set_upstreams(vec![other]);
            cluster.nodes[at].terminate().await;
            cluster.nodes[at] = ChatNode::start(&cluster.redis.url).await;
            cluster.route_to_all();
        }
        for (i, person) in people.iter_mut().enumerate() {
            person
                .say(&format!("{} #{} 🎉", person.nick, said[i]))
                .unwrap();
            said[i] += 1;
            while person.next(Duration::from_millis(5)).await.unwrap() {}
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let nicks: Vec<String> = people.iter().map(|person| person.nick.clone()).collect();
    for person in people.iter_mut() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !nicks
            .iter()
            .enumerate()
            .all(|(i, nick)| numbers_of(&person.lines, nick).len() >= said[i])
            && tokio::time::Instant::now() < deadline
        {
            person.next(Duration::from_millis(50)).await.unwrap();
        }
        for (i, nick) in nicks.iter().enumerate() {
            let expected: Vec<usize> = (0..said[i]).collect();
            assert_eq!(
                numbers_of(&person.lines, nick),
                expected,
                "{nick}'s lines as {} saw them",
                person.nick
            );
        }
    }
    // Nobody was reset, and presence still lists everyone.
    let newcomer = Person::join(&base, "newcomer", Transport::LongPoll).await;
    let mut expected = nicks.clone();
    expected.push("newcomer".into());
    expected.sort_by_key(|nick| nick.to_lowercase());
    assert_eq!(newcomer.members, expected);

    // What the nodes' /metrics say of it (issue 14): node 0 took the sessions node 1 handed
    // over, the broadcasts went through Redis, and polls that landed on the other node were
    // forwarded to the owner.
    let http = reqwest::Client::new();
    let total = |series: &str, texts: &[String]| -> f64 {
        texts
            .iter()
            .map(|text| chat::sample(text, series).unwrap_or(0.0))
            .sum()
    };
    let mut texts = Vec::new();
    for node in &cluster.nodes {
        texts.push(chat::scrape(&http, &node.addr.to_string()).await);
    }
    let handed = chat::sample(
        &texts[0],
        r#"switchboard_sessions_opened_total{origin="handover"}"#,
    );
    assert!(handed.unwrap_or(0.0) >= 1.0, "{}", texts[0]);
    assert!(total("switchboard_redis_published_total", &texts) > 0.0);
    assert!(
        total(
            r#"switchboard_redis_received_total{channel="room"}"#,
            &texts
        ) > 0.0
    );
    assert!(total(r#"switchboard_forwarded_total{outcome="answered"}"#, &texts) > 0.0);
}
