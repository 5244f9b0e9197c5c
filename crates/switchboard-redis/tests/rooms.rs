//! Rooms across nodes: a broadcast reaches every member on every node, and every member sees a
//! room's messages in one order, whatever node sent them (issue 10, "Cluster-wide application
//! API").
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Cluster, payload_bytes, text};
use switchboard_client::{Client, Transport};

const PER_NODE: usize = 300;
const MEMBERS_PER_NODE: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_over_three_nodes_has_one_order_for_every_member() {
    let mut cluster = Cluster::start(3, |builder| builder).await;
    // Members on every node, on every transport, connected to their node directly.
    let transports = [
        Transport::WebSocket,
        Transport::LongPoll,
        Transport::ShortPoll {
            interval: Duration::from_millis(10),
        },
    ];
    let mut clients = Vec::new();
    let mut sessions = Vec::new();
    for node in 0..3 {
        for transport in transports.iter().take(MEMBERS_PER_NODE) {
            let base = cluster.nodes[node].base.clone();
            clients.push(Client::connect(&base, *transport).await.unwrap());
            let session = cluster.next_session().await;
            session.join("room").unwrap();
            sessions.push(session);
        }
    }
    // An outsider on every node, who must receive nothing.
    let mut outsiders = Vec::new();
    let bases: Vec<String> = cluster.nodes.iter().map(|node| node.base.clone()).collect();
    for base in bases {
        outsiders.push(Client::connect(&base, Transport::WebSocket).await.unwrap());
        cluster.next_session().await.join("elsewhere").unwrap();
    }
    for node in &cluster.nodes {
        node.realtime.hub().flush().await.unwrap();
    }
    // Senders on all three nodes at once.
    let senders: Vec<_> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(n, node)| {
            let hub = node.realtime.hub();
            tokio::spawn(async move {
                for i in 0..PER_NODE {
                    let message = if i % 5 == 2 {
                        let mut bytes = payload_bytes(i);
                        bytes.insert(0, n as u8);
                        switchboard::Message::binary(bytes)
                    } else {
                        switchboard::Message::text(format!("node {n}: {}", text(i)))
                    };
                    hub.to("room").send(&message).unwrap();
                    if i % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    let total = 3 * PER_NODE;
    let mut orders = Vec::new();
    for client in &mut clients {
        let mut seen = Vec::with_capacity(total);
        for i in 0..total {
            let message = tokio::time::timeout(Duration::from_secs(20), client.recv())
                .await
                .unwrap_or_else(|_| panic!("message {i} did not arrive"))
                .unwrap();
            let key = match message.as_text() {
                Some(text) => text.to_string(),
                None => format!("{:?}", message.as_binary().unwrap()),
            };
            seen.push(key);
        }
        assert_eq!(
            client
                .recv_timeout(Duration::from_millis(200))
                .await
                .unwrap(),
            None
        );
        orders.push(seen);
    }
    // Each node's messages arrive in the order it sent them...
    for n in 0..3 {
        let prefix = format!("node {n}: ");
        let texts: Vec<&String> = orders[0]
            .iter()
            .filter(|m| m.starts_with(&prefix))
            .collect();
        let expected: Vec<String> = (0..PER_NODE)
            .filter(|i| i % 5 != 2)
            .map(|i| format!("node {n}: {}", text(i)))
            .collect();
        assert_eq!(texts, expected.iter().collect::<Vec<_>>());
    }
    // ...and every member saw exactly the same interleaving.
    for (member, order) in orders.iter().enumerate().skip(1) {
        assert!(order == &orders[0], "member {member} saw another order");
    }
    // The interleaving really mixed the nodes (otherwise one order is no achievement).
    let switches = orders[0]
        .windows(2)
        .filter(|pair| pair[0].get(..6) != pair[1].get(..6))
        .count();
    assert!(switches > 3, "{switches} switches between senders");
    for outsider in &mut outsiders {
        assert_eq!(
            outsider
                .recv_timeout(Duration::from_millis(100))
                .await
                .unwrap(),
            None
        );
    }
    drop(sessions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn except_and_all_work_from_any_node() {
    let mut cluster = Cluster::start(2, |builder| builder).await;
    let mut a = Client::connect(&cluster.nodes[0].base, Transport::WebSocket)
        .await
        .unwrap();
    let session_a = cluster.next_session().await;
    let mut b = Client::connect(&cluster.nodes[1].base, Transport::LongPoll)
        .await
        .unwrap();
    let session_b = cluster.next_session().await;
    session_a.join("pair").unwrap();
    session_b.join("pair").unwrap();
    for node in &cluster.nodes {
        node.realtime.hub().flush().await.unwrap();
    }
    // From node 1, leaving out a session of node 0.
    let hub1 = cluster.nodes[1].realtime.hub();
    hub1.to("pair")
        .except(&session_b)
        .send(&switchboard::Message::text("not for b 🙈"))
        .unwrap();
    cluster.nodes[0]
        .realtime
        .hub()
        .to("pair")
        .except(&session_a)
        .send(&switchboard::Message::text("not for a 🙉"))
        .unwrap();
    hub1.all()
        .send(&switchboard::Message::text("모두에게"))
        .unwrap();
    assert_eq!(common::next_text(&mut a).await, "not for b 🙈");
    assert_eq!(common::next_text(&mut a).await, "모두에게");
    // Two nodes' publications: Redis orders them, either way.
    let mut for_b = [
        common::next_text(&mut b).await,
        common::next_text(&mut b).await,
    ];
    for_b.sort();
    assert_eq!(for_b, ["not for a 🙉", "모두에게"]);
    // Several left out, by session and by key (issue 15), across nodes: neither hears the first.
    hub1.to("pair")
        .except(&session_a)
        .except_keys([session_b.key()])
        .send(&switchboard::Message::text("for nobody"))
        .unwrap();
    hub1.all()
        .except_keys([session_a.key(), session_b.key()])
        .send(&switchboard::Message::text("nobody either"))
        .unwrap();
    hub1.to("pair")
        .send(&switchboard::Message::text("both again"))
        .unwrap();
    assert_eq!(common::next_text(&mut a).await, "both again");
    assert_eq!(common::next_text(&mut b).await, "both again");
    // After the last member on node 0 leaves, node 0 no longer hears the room.
    session_a.leave("pair");
    cluster.nodes[0].realtime.hub().flush().await.unwrap();
    hub1.to("pair")
        .send(&switchboard::Message::text("b only"))
        .unwrap();
    assert_eq!(common::next_text(&mut b).await, "b only");
    assert_eq!(
        a.recv_timeout(Duration::from_millis(200)).await.unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_moving_between_nodes_misses_nothing_of_its_room() {
    const EACH: usize = 400;
    let mut cluster = Cluster::start(3, |builder| builder).await;
    // A member that stays on node 0, to compare with.
    let mut observer = Client::connect(&cluster.nodes[0].base, Transport::LongPoll)
        .await
        .unwrap();
    let watching = cluster.next_session().await;
    watching.join("room").unwrap();
    // The member that moves: its every WebSocket goes to the next node, which takes it over.
    let mut current = cluster.follow();
    let mut mover = cluster
        .through_proxy(Transport::WebSocket)
        .connect()
        .await
        .unwrap();
    current.live().await.join("room").unwrap();
    for node in &cluster.nodes {
        node.realtime.hub().flush().await.unwrap();
    }
    let senders: Vec<_> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(n, node)| {
            let hub = node.realtime.hub();
            tokio::spawn(async move {
                for i in 0..EACH {
                    hub.to("room")
                        .send(&switchboard::Message::text(format!("{n}/{i} 🎉")))
                        .unwrap();
                    if i % 8 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            })
        })
        .collect();
    let total = 3 * EACH;
    let mut moved = Vec::with_capacity(total);
    for i in 0..total {
        if i % 100 == 50 {
            mover.switch(Transport::WebSocket).await.unwrap();
        }
        let Ok(message) = tokio::time::timeout(Duration::from_secs(5), mover.recv()).await else {
            let mut missing = Vec::new();
            for n in 0..3 {
                for j in 0..EACH {
                    let text = format!("{n}/{j} 🎉");
                    if !moved.contains(&text) {
                        missing.push(text);
                    }
                }
            }
            panic!(
                "message {i} did not reach the moving member; missing {missing:?}; stats {:?}",
                mover.stats()
            );
        };
        moved.push(message.unwrap().as_text().unwrap().to_string());
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let mut watched = Vec::with_capacity(total);
    for i in 0..total {
        let message = tokio::time::timeout(Duration::from_secs(20), observer.recv())
            .await
            .unwrap_or_else(|_| panic!("message {i} did not reach the observer"))
            .unwrap();
        watched.push(message.as_text().unwrap().to_string());
    }
    assert_eq!(
        mover
            .recv_timeout(Duration::from_millis(200))
            .await
            .unwrap(),
        None
    );
    assert_eq!(moved, watched, "the moving member saw another order");
    let handlers = current.handlers.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        handlers >= 6,
        "{handlers} handlers: the member did not move"
    );
    let session = current.live().await;
    assert!(session.handed_over() && session.in_room("room"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_sends_and_close_by_key_reach_a_session_on_another_node_even_while_it_moves() {
    const EACH: usize = 300;
    let mut cluster = Cluster::start(3, |builder| builder).await;
    let mut current = cluster.follow();
    // A client whose every WebSocket lands on the next node (each one moves its session).
    let mut mover = cluster
        .through_proxy(Transport::WebSocket)
        .connect()
        .await
        .unwrap();
    let key = current.live().await.key();
    // Every node sends to it by key, all at once; it moves every 100 messages.
    let senders: Vec<_> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(n, node)| {
            let hub = node.realtime.hub();
            tokio::spawn(async move {
                for i in 0..EACH {
                    hub.session(key)
                        .send(&switchboard::Message::text(format!("{n}/{i} ✉️")))
                        .unwrap();
                    if i % 8 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            })
        })
        .collect();
    let mut got = Vec::new();
    for i in 0..3 * EACH {
        if i % 100 == 50 {
            mover.switch(Transport::WebSocket).await.unwrap();
        }
        let message = tokio::time::timeout(Duration::from_secs(20), mover.recv())
            .await
            .unwrap_or_else(|_| panic!("direct message {i} did not arrive ({} so far)", got.len()))
            .unwrap();
        got.push(message.as_text().unwrap().to_string());
    }
    for sender in senders {
        sender.await.unwrap();
    }
    // Each node's messages: all of them, once, in the order that node sent them.
    for n in 0..3 {
        let from_n: Vec<&String> = got
            .iter()
            .filter(|text| text.starts_with(&format!("{n}/")))
            .collect();
        let expected: Vec<String> = (0..EACH).map(|i| format!("{n}/{i} ✉️")).collect();
        assert_eq!(from_n, expected.iter().collect::<Vec<_>>());
    }
    assert!(current.handlers.load(std::sync::atomic::Ordering::SeqCst) >= 6);
    // Closed by key from a node that does not hold it: the client is told, with the reason.
    let holder = current.live().await;
    let other = cluster
        .nodes
        .iter()
        .find(|node| {
            node.realtime
                .hub()
                .sessions()
                .iter()
                .all(|session| session.key() != key)
        })
        .unwrap();
    other
        .realtime
        .hub()
        .session(key)
        .close("잘 가요 👋")
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), mover.recv())
        .await
        .unwrap();
    match ended {
        Err(switchboard_client::Error::SessionClosed { code, reason }) => {
            assert_eq!((code, reason.as_str()), (4000, "잘 가요 👋"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        holder.closed().await,
        switchboard::CloseReason::Closed("잘 가요 👋".into())
    );
}

/// The next presence event of `watch` as `(key, room, change)` (at most 10 s).
async fn presence(
    watch: &mut switchboard::PresenceWatch<()>,
) -> (u64, String, switchboard::PresenceChange) {
    let event = tokio::time::timeout(Duration::from_secs(10), watch.recv())
        .await
        .expect("no presence event within 10 s")
        .unwrap();
    (event.member.key.0, event.room.to_string(), event.change)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_events_reach_every_node_in_one_order_and_a_move_announces_nothing() {
    use switchboard::PresenceChange::{Ended, Joined, Left};
    let mut cluster = Cluster::start(3, |builder| builder).await;
    let mut watches: Vec<_> = cluster
        .nodes
        .iter()
        .map(|node| node.realtime.hub().watch_presence())
        .collect();
    // One member per node, joining and leaving from all three nodes.
    let mut clients = Vec::new();
    let mut sessions = Vec::new();
    for node in 0..3 {
        let base = cluster.nodes[node].base.clone();
        clients.push(Client::connect(&base, Transport::WebSocket).await.unwrap());
        sessions.push(cluster.next_session().await);
    }
    let keys: Vec<u64> = sessions.iter().map(|session| session.key().0).collect();
    for session in &sessions {
        session.join("방 🎉").unwrap();
    }
    sessions[2].join("other").unwrap();
    assert!(sessions[1].leave("방 🎉"));
    sessions[2].close("bye");
    let mut orders = Vec::new();
    for watch in &mut watches {
        let mut order = Vec::new();
        for _ in 0..7 {
            order.push(presence(watch).await);
        }
        orders.push(order);
    }
    // Every node saw the same events in the same order: one order cluster-wide, in which each
    // session's events come as it made them (events of different nodes' sessions interleave
    // as their publications reached Redis, like broadcasts).
    assert_eq!(orders[1], orders[0]);
    assert_eq!(orders[2], orders[0]);
    let room = || "방 🎉".to_string();
    let of = |key: u64| -> Vec<(String, switchboard::PresenceChange)> {
        orders[0]
            .iter()
            .filter(|event| event.0 == key)
            .map(|event| (event.1.clone(), event.2))
            .collect()
    };
    assert_eq!(of(keys[0]), [(room(), Joined)]);
    assert_eq!(of(keys[1]), [(room(), Joined), (room(), Left)]);
    let mut third = of(keys[2]);
    assert_eq!(third[..2], [(room(), Joined), ("other".into(), Joined)]);
    // Its two rooms' ends may come in either order.
    third[2..].sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(third[2..], [("other".into(), Ended), (room(), Ended)]);

    // A member whose every WebSocket goes to the next node: it joins once and, however often it
    // moves, neither leaves nor joins again until it closes.
    let mut current = cluster.follow();
    let mut mover = cluster
        .through_proxy(Transport::WebSocket)
        .connect()
        .await
        .unwrap();
    let first = current.live().await;
    first.join("방 🎉").unwrap();
    let key = first.key().0;
    for watch in &mut watches {
        assert_eq!(presence(watch).await, (key, room(), Joined));
    }
    for _ in 0..4 {
        mover.switch(Transport::WebSocket).await.unwrap();
    }
    let last = current.live().await;
    assert!(last.handed_over() && last.in_room("방 🎉"));
    let handlers = current.handlers.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        handlers >= 4,
        "{handlers} handlers: the member did not move"
    );
    mover.close().await.unwrap();
    for watch in &mut watches {
        assert_eq!(presence(watch).await, (key, room(), Ended));
        let more = tokio::time::timeout(Duration::from_millis(300), watch.recv()).await;
        assert!(more.is_err(), "more events: {more:?}");
    }
    drop((clients, sessions));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_follows_its_session_to_the_node_that_took_it_over() {
    let mut cluster = Cluster::start(2, |builder| builder).await;
    let mut current = cluster.follow();
    let mut client = cluster
        .through_proxy(Transport::WebSocket)
        .connect()
        .await
        .unwrap();
    let first = current.live().await;
    client
        .send(switchboard_client::Message::text("질문 ❓").with_request(41))
        .unwrap();
    let request = tokio::time::timeout(Duration::from_secs(10), first.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(request.request_id(), Some(41));
    // The handler has the request; the session moves to the other node before it answers.
    client.switch(Transport::WebSocket).await.unwrap();
    let now = current.live().await;
    assert!(first.is_closed() && now.handed_over());
    first
        .reply(&request, switchboard::Message::text("답 ✅"))
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), client.recv())
        .await
        .expect("the reply did not follow the session")
        .unwrap();
    assert_eq!(reply.reply_to, Some(41));
    assert_eq!(reply.as_text(), Some("답 ✅"));
    assert_eq!(
        client
            .recv_timeout(Duration::from_millis(300))
            .await
            .unwrap(),
        None
    );
}
