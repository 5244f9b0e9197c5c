// The chat page. Everything it knows arrives as named events over one Switchboard connection;
// everything other people wrote is put on the page with textContent, never as HTML.

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
// `?transport=sse` (or `longpoll`, `poll`, `websocket`) forces one transport, to see the fallback work.
const forced = params.get("transport");
const MAX_TEXT = 500;

let conn = null;
let me = null;
let room = null;
let wanted = "lobby";
let lastTyping = 0;
const typing = new Map(); // nick → until (ms)

$("nick").value = params.get("nick") || localStorage.getItem("chat-nick") || "";

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  const nick = $("nick").value.trim();
  if (!nick) return;
  localStorage.setItem("chat-nick", nick);
  $("login-problem").textContent = "";
  start(nick);
});

function start(nick) {
  conn = Switchboard.connect("/realtime", { auth: { nick }, ...(forced ? { transports: [forced] } : {}) });
  window.conn = conn; // handy in the console, and for the tests

  conn.on("state", badge);
  conn.on("transport", badge);
  // A new session (the first, or after a reset): the server puts us in the lobby; go back to
  // the room we were in.
  conn.on("open", () => wanted !== "lobby" && conn.emit("join", { room: wanted }));
  conn.on("reset", () => notice("Connection reset by the server; rejoining…"));
  conn.on("close", ({ code, reason }) => {
    if (!me) {
      $("login-problem").textContent = code === 4403 ? "That nickname is not allowed (1 to 24 characters)." : `Refused: ${reason}`;
    } else {
      problem(`Disconnected: ${reason || code}`);
    }
  });

  conn.on("welcome", (data) => {
    me = data.nick;
    $("login").hidden = true;
    $("chat").hidden = false;
    rooms(data.rooms);
    $("text").focus();
  });
  conn.on("rooms", (data) => rooms(data.rooms));
  conn.on("joined", (data) => {
    room = wanted = data.room;
    $("room-title").textContent = room;
    $("lines").replaceChildren();
    for (const line of data.history) say(line, true);
    members(data.members);
    typing.clear();
    showTyping();
    for (const li of $("rooms").children) li.classList.toggle("current", li.dataset.room === room);
  });
  conn.on("line", (data) => {
    if (data.room !== room) return;
    typing.delete(data.nick);
    showTyping();
    say(data, false);
  });
  conn.on("notice", (data) => data.room === room && notice(data.text));
  conn.on("presence", (data) => data.room === room && members(data.members));
  conn.on("typing", (data) => {
    if (data.room !== room) return;
    typing.set(data.nick, Date.now() + 3000);
    showTyping();
    setTimeout(showTyping, 3100);
  });
  conn.on("problem", (data) => problem(data.text));
}

function badge() {
  const el = $("badge");
  el.className = `badge ${conn.state}`;
  $("badge-state").textContent = conn.state;
  $("badge-transport").textContent = conn.transport || "–";
}

function rooms(names) {
  const list = $("rooms");
  list.replaceChildren(
    ...names.map((name) => {
      const li = document.createElement("li");
      li.textContent = name;
      li.dataset.room = name;
      li.classList.toggle("current", name === room);
      li.addEventListener("click", () => join(name));
      return li;
    }),
  );
}

function members(nicks) {
  $("member-count").textContent = `(${nicks.length})`;
  $("members").replaceChildren(
    ...nicks.map((nick) => {
      const li = document.createElement("li");
      li.textContent = nick === me ? `${nick} (you)` : nick;
      return li;
    }),
  );
}

function say(line, fromHistory) {
  const li = document.createElement("li");
  li.classList.toggle("mine", line.nick === me);
  li.classList.toggle("history", fromHistory);
  const nick = document.createElement("span");
  nick.className = "nick";
  nick.textContent = line.nick;
  const time = document.createElement("time");
  time.textContent = new Date(line.ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  li.append(nick, document.createTextNode(line.text), time);
  append(li);
}

function notice(text) {
  const li = document.createElement("li");
  li.className = "notice";
  li.textContent = text;
  append(li);
}

function append(li) {
  const lines = $("lines");
  const atBottom = lines.scrollHeight - lines.scrollTop - lines.clientHeight < 40;
  lines.append(li);
  while (lines.children.length > 500) lines.firstChild.remove();
  if (atBottom) lines.scrollTop = lines.scrollHeight;
}

function showTyping() {
  const now = Date.now();
  const nicks = [...typing].filter(([, until]) => until > now).map(([nick]) => nick);
  $("typing").textContent =
    nicks.length === 0 ? "" : nicks.length === 1 ? `${nicks[0]} is typing…` : `${nicks.join(", ")} are typing…`;
}

function problem(text) {
  $("problem").textContent = text;
  clearTimeout(problem.timer);
  problem.timer = setTimeout(() => ($("problem").textContent = ""), 5000);
}

function join(name) {
  if (name && name !== room) conn.emit("join", { room: name });
}

$("new-room").addEventListener("submit", (event) => {
  event.preventDefault();
  join($("room-name").value.trim().toLowerCase());
  $("room-name").value = "";
});

$("say").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  if ([...text].length > MAX_TEXT) return problem(`A message has at most ${MAX_TEXT} characters.`);
  conn.emit("say", { text });
  $("text").value = "";
  lastTyping = 0;
});

// Typing indicators: at most one every 2 s, low priority (they may wait to travel with others).
$("text").addEventListener("input", () => {
  if (Date.now() - lastTyping < 2000 || !$("text").value) return;
  lastTyping = Date.now();
  conn.emit("typing", {}, { lowPriority: true });
});
