//! The Switchboard chat: the canonical way to use Switchboard, top to bottom.
//!
//! `cargo run -p chat`, then open <http://127.0.0.1:3000>. Pick a nickname, talk, switch rooms or
//! create one, watch who is there and who is typing. Add `?transport=longpoll` (or `poll`, or
//! `websocket`) to the page's URL to force a transport and watch the fallback work; the badge in
//! the corner shows what is in use. The address can be changed with `--addr 127.0.0.1:8080` or the
//! `CHAT_ADDR` environment variable.
//!
//! The protocol between page and server is a handful of named events (`emit` on one side, `on` on
//! the other) over one Switchboard session:
//!
//! | page → server | server → page |
//! |---|---|
//! | `join {room}` | `welcome {nick, rooms}`, `joined {room, members, history}` |
//! | `say {text}` | `line {room, nick, text, ts}`, `notice {room, text}` |
//! | `typing {}` (low priority) | `typing {room, nick}` (low priority), `presence {room, members}` |
//! | | `rooms {rooms}`, `problem {text}` |

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::serve::ListenerExt as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use switchboard::{Hub, Message, Refusal, Session, Switchboard};
use tower_http::services::ServeDir;

/// Longest nickname, in characters.
const MAX_NICK: usize = 24;
/// Longest chat message, in characters.
const MAX_TEXT: usize = 500;
/// Longest room name, in characters.
const MAX_ROOM: usize = 32;
/// Most rooms (with members or history) at once.
const MAX_ROOMS: usize = 100;
/// Messages of history kept per room and shown to whoever joins.
const HISTORY: usize = 50;
/// Rooms that always exist.
const DEFAULT_ROOMS: [&str; 3] = ["lobby", "rust", "random"];

/// What the authentication hook attaches to each session: here, just the nickname.
#[derive(Clone, Debug)]
struct User {
    nick: String,
}

/// One line of a room's history.
#[derive(Clone, Debug, Serialize)]
struct Line {
    nick: String,
    text: String,
    ts: u64,
}

/// The chat's own state: Switchboard's hub (rooms, fan-out, presence) plus each room's history.
#[derive(Clone)]
struct Chat {
    hub: Hub<User>,
    history: Arc<Mutex<HashMap<String, VecDeque<Line>>>>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("chat: {problem}");
            ExitCode::FAILURE
        }
    }
}

/// Sets up and serves the chat until Ctrl-C; `Err` says what went wrong (a bad address, a port
/// that is taken).
async fn run() -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,switchboard=info".into()),
        )
        .init();
    let addr = address()?;

    // Who may open a session: anyone with a valid nickname. The page passes it as `auth` data;
    // a refusal reaches the page as a `close` event with code 4400 + status.
    let realtime = Switchboard::builder()
        .authenticate(|handshake| async move {
            let nick = handshake
                .auth()
                .and_then(|auth| auth.get("nick"))
                .and_then(|nick| nick.as_str())
                .map(str::trim)
                .unwrap_or_default();
            valid_name(nick, MAX_NICK)
                .then(|| User {
                    nick: nick.to_string(),
                })
                .ok_or_else(|| {
                    Refusal::forbidden(format!("a nickname has 1 to {MAX_NICK} characters"))
                })
        })
        .build();

    let chat = Chat {
        hub: realtime.hub(),
        history: Arc::default(),
    };
    let static_files = concat!(env!("CARGO_MANIFEST_DIR"), "/static");
    let app = Router::new()
        .nest(
            "/realtime",
            realtime.router(move |session| on_session(session, chat.clone())),
        )
        .fallback_service(ServeDir::new(static_files));

    // A listen queue of 4096 rather than TcpListener::bind's 128: when many pages reconnect at
    // once (a restart, a network blip), an overflowing queue costs each extra client a 1 s SYN
    // retry (docs/deployment.md, "Listen backlog and reconnect storms").
    let listener = listen(addr).map_err(|err| format!("cannot listen on {addr}: {err}"))?;
    let local = listener
        .local_addr()
        .map_err(|err| format!("cannot listen on {addr}: {err}"))?;
    // TCP_NODELAY: small realtime frames go out at once instead of waiting on Nagle's algorithm.
    tracing::info!("chat on http://{local}");
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // `into_make_service`: every connection shares the router instead of keeping its own copy
    // (about 5 KB less per held long poll; docs/deployment.md, "Sizing memory").
    axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(async move {
            tokio::signal::ctrl_c().await.ok();
            // Tells every page the server is going away and releases waiting polls.
            realtime.shutdown().await;
        })
        .await
        .map_err(|err| format!("server failed: {err}"))
}

/// A listener on `addr` with a listen queue of 4096.
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// The listening address: `--addr HOST:PORT`, else `CHAT_ADDR`, else 127.0.0.1:3000.
fn address() -> Result<SocketAddr, String> {
    let mut args = std::env::args().skip(1);
    let mut addr = std::env::var("CHAT_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(value)) => addr = value,
            _ => return Err("usage: chat [--addr HOST:PORT] (or CHAT_ADDR=HOST:PORT)".into()),
        }
    }
    addr.parse()
        .map_err(|err| format!("bad address {addr:?}: {err}"))
}

/// A session's life: it runs as long as the page is connected (across transport changes), and
/// its messages arrive here in order, exactly once.
async fn on_session(session: Session<User>, chat: Chat) {
    let nick = session.user().nick.clone();
    session
        .emit("welcome", &json!({ "nick": nick, "rooms": chat.rooms() }))
        .ok();
    let mut room = chat.enter(&session, None, "lobby");

    while let Some(message) = session.recv().await {
        match message.event() {
            Some("join") => match message.decode::<Join>() {
                Ok(join) => match chat.check_room(&join.room) {
                    Ok(name) => room = chat.enter(&session, Some(&room), &name),
                    Err(problem) => tell(&session, &problem),
                },
                Err(_) => tell(&session, "join needs a room name"),
            },
            Some("say") => match message.decode::<Say>() {
                Ok(say) => chat.say(&session, &room, say.text.trim()),
                Err(_) => tell(&session, "say needs text"),
            },
            // Typing indicators are chatter: low priority, so a burst of them costs one response
            // on long polling rather than one each, and they never delay real messages.
            Some("typing") => {
                chat.hub
                    .to(&room)
                    .except(&session)
                    .low_priority()
                    .emit("typing", &json!({ "room": room, "nick": nick }))
                    .ok();
            }
            _ => tell(&session, "unknown command"),
        }
    }
    // The session has ended (the page left for good, or its session expired): say goodbye.
    chat.leave(&session, &room);
}

#[derive(Deserialize)]
struct Join {
    room: String,
}

#[derive(Deserialize)]
struct Say {
    text: String,
}

/// Tells one page that its request was refused, and why.
fn tell(session: &Session<User>, problem: &str) {
    session.emit("problem", &json!({ "text": problem })).ok();
}

/// A name is 1 to `max` characters with no control characters.
fn valid_name(name: &str, max: usize) -> bool {
    let chars = name.chars().count();
    (1..=max).contains(&chars) && !name.chars().any(char::is_control)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl Chat {
    /// The rooms to offer: the default ones and every room with someone in it.
    fn rooms(&self) -> Vec<String> {
        let mut rooms: Vec<String> = DEFAULT_ROOMS.iter().map(|room| room.to_string()).collect();
        let mut others = self.hub.rooms();
        others.retain(|room| !rooms.contains(room));
        others.sort();
        rooms.extend(others);
        rooms
    }

    /// Checks a room name a page asked for; `Err` says what is wrong.
    fn check_room(&self, room: &str) -> Result<String, String> {
        let room = room.trim().to_lowercase();
        if !valid_name(&room, MAX_ROOM) {
            return Err(format!("a room name has 1 to {MAX_ROOM} characters"));
        }
        if !self.rooms().contains(&room) && self.hub.rooms().len() >= MAX_ROOMS {
            return Err("there are too many rooms already".into());
        }
        Ok(room)
    }

    /// Moves a session into `room`: leaves the old one, joins, sends the newcomer the member list
    /// and the history, and tells the room.
    fn enter(&self, session: &Session<User>, from: Option<&str>, room: &str) -> String {
        if let Some(from) = from {
            if from == room {
                return room.to_string();
            }
            self.leave(session, from);
        }
        let created = !self.rooms().iter().any(|known| known == room);
        if session.join(room).is_err() {
            return from.unwrap_or("lobby").to_string();
        }
        let history: Vec<Line> = self
            .history
            .lock()
            .map(|history| {
                history
                    .get(room)
                    .map(|lines| lines.iter().cloned().collect())
            })
            .unwrap_or_default()
            .unwrap_or_default();
        session
            .emit(
                "joined",
                &json!({ "room": room, "members": self.members(room), "history": history }),
            )
            .ok();
        let nick = &session.user().nick;
        self.notice(room, Some(session), &format!("{nick} joined"));
        self.presence(room);
        if created {
            self.hub
                .all()
                .emit("rooms", &json!({ "rooms": self.rooms() }))
                .ok();
        }
        room.to_string()
    }

    /// Takes a session out of `room` and tells the others.
    fn leave(&self, session: &Session<User>, room: &str) {
        session.leave(room);
        let nick = &session.user().nick;
        self.notice(room, None, &format!("{nick} left"));
        self.presence(room);
        // A room nobody is in is forgotten (unless it is a default one), history included.
        if self.hub.member_count(room) == 0 && !DEFAULT_ROOMS.contains(&room) {
            if let Ok(mut history) = self.history.lock() {
                history.remove(room);
            }
            self.hub
                .all()
                .emit("rooms", &json!({ "rooms": self.rooms() }))
                .ok();
        }
    }

    /// Posts a message to the room, after checking it, and keeps it in the room's history.
    fn say(&self, session: &Session<User>, room: &str, text: &str) {
        if text.is_empty() {
            return;
        }
        if text.chars().count() > MAX_TEXT {
            return tell(
                session,
                &format!("a message has at most {MAX_TEXT} characters"),
            );
        }
        let line = Line {
            nick: session.user().nick.clone(),
            text: text.to_string(),
            ts: now_ms(),
        };
        if let Ok(mut history) = self.history.lock() {
            let lines = history.entry(room.to_string()).or_default();
            lines.push_back(line.clone());
            if lines.len() > HISTORY {
                lines.pop_front();
            }
        }
        // One encoding, shared by every member's buffer; the sender gets it too, in order.
        let message = json!({ "room": room, "nick": line.nick, "text": line.text, "ts": line.ts });
        self.hub.to(room).emit("line", &message).ok();
    }

    /// A system line in a room ("… joined"), for everyone but `except`.
    fn notice(&self, room: &str, except: Option<&Session<User>>, text: &str) {
        let notice = Message::json(&json!({ "room": room, "text": text }))
            .map(|message| message.with_event("notice"));
        if let Ok(notice) = notice {
            let target = self.hub.to(room);
            let target = match except {
                Some(session) => target.except(session),
                None => target,
            };
            target.send(&notice).ok();
        }
    }

    /// The room's member list, sent to everyone in it whenever it changes (presence).
    fn presence(&self, room: &str) {
        let members = self.members(room);
        self.hub
            .to(room)
            .emit("presence", &json!({ "room": room, "members": members }))
            .ok();
    }

    fn members(&self, room: &str) -> Vec<String> {
        let mut nicks: Vec<String> = self
            .hub
            .members(room)
            .iter()
            .map(|session| session.user().nick.clone())
            .collect();
        nicks.sort_by_key(|nick| nick.to_lowercase());
        nicks
    }
}
