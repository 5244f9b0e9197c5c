// The connection's state machine, against fake sockets and a fake fetch: transport choice,
// fallback, upgrade, dedup, acknowledgements, resend and reset.

import { test, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";

import { connect } from "../../src/index.js";
import { FakeWebSocket, fakeFetch, memoryStorage, openFrame, until, tick } from "./fakes.mjs";

const BASE = "http://127.0.0.1:9/rt";
const SID = "0123456789abcdef0123456789abcdef";

const opened = [];

function setup(options = {}) {
  const { fetch, calls } = fakeFetch();
  const storage = options.storage || memoryStorage();
  const conn = connect(BASE, {
    WebSocket: FakeWebSocket,
    fetch,
    storage,
    backoff: { min: 5, max: 20 },
    // Most tests here are about falling back to polling; the SSE tests give the default order.
    transports: ["websocket", "longpoll", "poll"],
    probeDelay: 100000,
    raceAfter: 100000,
    ...options,
  });
  opened.push({ conn, calls });
  const events = [];
  for (const name of ["open", "message", "close", "transport", "state", "reset"]) {
    conn.on(name, (...args) => events.push([name, ...args]));
  }
  return { conn, calls, events, storage };
}

const OPEN = openFrame({ sid: SID });
const attOf = (url) => Number(new URL(url.replace(/^ws/, "http")).searchParams.get("att"));
const messages = (events) => events.filter(([name]) => name === "message").map(([, data]) => data);
const pending = (calls, pattern) => calls.filter((call) => !call.done && pattern.test(call.url));

/** Answers the first unanswered call matching `pattern`. */
async function answer(calls, pattern, status, body) {
  await until(() => calls.some((call) => !call.answered && !call.aborted && pattern.test(call.url)));
  const call = calls.find((c) => !c.answered && !c.aborted && pattern.test(c.url));
  call.answered = true;
  call.answer(status, body);
  return call;
}

beforeEach(() => FakeWebSocket.reset());
afterEach(async () => {
  for (const { conn, calls } of opened.splice(0)) {
    conn.close();
    await tick();
    // Requests nobody answered (the goodbye POST among them) fail, releasing their timers.
    for (const call of calls) if (!call.answered && !call.aborted) call.fail();
  }
});

test("opens a session over WebSocket first, with auth in the query", async () => {
  const { conn, events } = setup({ auth: { token: "토큰" } });
  await until(() => FakeWebSocket.last());
  const ws = FakeWebSocket.last();
  assert.match(ws.url, /^ws:\/\/127\.0\.0\.1:9\/rt\/ws\?v=1&batch=1&att=1&auth=/);
  assert.deepEqual(JSON.parse(decodeURIComponent(ws.url.split("auth=")[1])), { token: "토큰" });
  ws.accept({ sid: SID });
  assert.equal(conn.transport, "websocket");
  assert.equal(conn.state, "open");
  assert.deepEqual(
    events.map(([name]) => name),
    ["transport", "state", "open"],
  );
});

test("delivers each message once, in order, and drops what it has already seen", async () => {
  const { events } = setup();
  await until(() => FakeWebSocket.last());
  const ws = FakeWebSocket.last();
  ws.accept({ sid: SID });
  ws.deliver(
    { t: "m", s: 1, d: "안녕" },
    { t: "m", s: 2, d: { n: 2 } },
    { t: "m", s: 2, d: { n: 2 } },
    { t: "m", s: 1, d: "안녕" },
    { t: "m", s: 3, b: "AP8=" },
    { t: "m", s: 4, e: "chat", d: "🎉" },
  );
  const received = messages(events);
  assert.deepEqual(received.slice(0, 3), ["안녕", { n: 2 }, new Uint8Array([0, 255])]);
  assert.equal(received[3], "🎉");
  assert.equal(received.length, 4);
});

test("named events reach their own listeners too", async () => {
  const { conn } = setup();
  const chats = [];
  conn.on("chat", (data, info) => chats.push([data, info.event, info.seq]));
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().accept({ sid: SID });
  FakeWebSocket.last().deliver({ t: "m", s: 1, e: "chat", d: "hi" }, { t: "m", s: 2, e: "close", d: "not a close" });
  assert.deepEqual(chats, [["hi", "chat", 1]]);
  assert.equal(conn.state, "open");
});

test("acknowledges at once after 32 messages, otherwise within 100 ms", async () => {
  setup();
  await until(() => FakeWebSocket.last());
  const ws = FakeWebSocket.last();
  ws.accept({ sid: SID });
  ws.deliver({ t: "m", s: 1, d: 1 });
  assert.deepEqual(ws.sent, []);
  await until(() => ws.sent.length === 1, 1000);
  assert.deepEqual(ws.sent[0], { t: "ack", a: 1 });
  for (let s = 2; s <= 40; s++) ws.deliver({ t: "m", s, d: s });
  assert.deepEqual(ws.sent[1], { t: "ack", a: 33 });
  await until(() => ws.sent.length === 3, 1000);
  assert.deepEqual(ws.sent[2], { t: "ack", a: 40 });
});

test("a batch of frames in one message is handled in order, each message once, and acknowledged", async () => {
  const { conn, events } = setup();
  await until(() => FakeWebSocket.last());
  const ws = FakeWebSocket.last();
  assert.ok(ws.batch, "the client asks for batches");
  // The socket opens; the open frame and what follows it come in the same message.
  ws.readyState = 1;
  ws.deliverBatch(openFrame({ sid: SID }), { t: "m", s: 1, d: "one" });
  assert.equal(conn.state, "open");
  conn.send("mine");
  ws.deliverBatch(
    { t: "m", s: 2, d: "two" },
    { t: "ack", a: 1 },
    { t: "m", s: 3, e: "chat", d: "three" },
    { t: "m", s: 2, d: "two" },
    { t: "ping" },
    { t: "m", s: 4, b: "AP8=" },
  );
  assert.deepEqual(messages(events), ["one", "two", "three", new Uint8Array([0, 255])]);
  assert.deepEqual(ws.sent, [{ t: "m", s: 1, d: "mine" }, { t: "pong" }]);
  // The server's ack in the batch released our message: a resume would not send it again.
  assert.equal(conn._out.length, 0);
  await until(() => ws.sent.length === 3, 1000);
  assert.deepEqual(ws.sent[2], { t: "ack", a: 4 });
  await tick(150);
  assert.equal(ws.sent.length, 3, "acknowledged once");
});

test("a message holding a single frame, not an array, is still accepted", async () => {
  const { conn, events } = setup();
  await until(() => FakeWebSocket.last());
  const ws = FakeWebSocket.last();
  ws.readyState = 1;
  ws.message(openFrame({ sid: SID }));
  assert.equal(conn.state, "open");
  ws.message({ t: "m", s: 1, d: "alone" });
  ws.deliverBatch({ t: "m", s: 2, d: "batched" });
  ws.message({ t: "m", s: 3, d: "alone again" });
  assert.deepEqual(messages(events), ["alone", "batched", "alone again"]);
  await until(() => ws.sent.length === 1, 1000);
  assert.deepEqual(ws.sent[0], { t: "ack", a: 3 });
});

test("a batch ends at the frame that stopped the transport", async () => {
  // A close frame: what follows it in the batch is not delivered.
  let { conn, events } = setup();
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().accept({ sid: SID });
  FakeWebSocket.last().deliverBatch({ t: "m", s: 1, d: "last" }, { t: "close", code: 4000, reason: "kicked" }, { t: "m", s: 2, d: "after" });
  assert.deepEqual(messages(events), ["last"]);
  assert.deepEqual(events.at(-1), ["close", { code: 4000, reason: "kicked" }]);

  // A `close` before the open frame fails the socket; an open frame after it is not taken (and
  // starts no heartbeat timer on the dead socket).
  FakeWebSocket.reset();
  ({ conn, events } = setup());
  await until(() => FakeWebSocket.last());
  const ws = FakeWebSocket.last();
  const intervals = [];
  const setInterval = globalThis.setInterval;
  globalThis.setInterval = (...args) => {
    const id = setInterval(...args);
    intervals.push(id);
    return id;
  };
  try {
    ws.deliverBatch({ t: "close", reason: "broken" }, openFrame({ sid: SID }));
  } finally {
    globalThis.setInterval = setInterval;
    intervals.forEach(clearInterval);
  }
  assert.equal(ws.closedWith, 1000, "the socket is abandoned");
  assert.equal(intervals.length, 0);
  assert.notEqual(conn.transport, "websocket");
  assert.deepEqual(events.filter(([name]) => name === "open" || name === "message"), []);
});

test("answers pings and numbers outgoing messages, text, JSON and binary", async () => {
  const { conn } = setup();
  conn.send("before open");
  await until(() => FakeWebSocket.last());
  const ws = FakeWebSocket.last();
  ws.accept({ sid: SID });
  conn.send({ a: [1, "둘"] });
  conn.send(new Uint8Array([1, 2, 255]));
  conn.emit("typing", true);
  ws.deliver({ t: "ping" });
  assert.deepEqual(ws.sent, [
    { t: "m", s: 1, d: "before open" },
    { t: "m", s: 2, d: { a: [1, "둘"] } },
    { t: "m", s: 3, b: "AQL/" },
    { t: "m", s: 4, e: "typing", d: true },
    { t: "pong" },
  ]);
});

test("low-priority sends wait briefly and go out together", async () => {
  const { conn } = setup({ lowPriorityDelay: 30 });
  await until(() => FakeWebSocket.last());
  const ws = FakeWebSocket.last();
  ws.accept({ sid: SID });
  conn.send("typing 1", { lowPriority: true });
  conn.send("typing 2", { lowPriority: true });
  assert.equal(ws.sent.length, 0);
  await until(() => ws.sent.length === 2, 1000);
  conn.send("low", { lowPriority: true });
  conn.send("normal");
  assert.deepEqual(ws.sent.slice(2).map((frame) => frame.d), ["low", "normal"]);
});

test("resumes after a dropped socket and resends only what the server lacks", async () => {
  const { conn, events } = setup({ earlyCloseWindow: 0 });
  await until(() => FakeWebSocket.last());
  const first = FakeWebSocket.last();
  first.accept({ sid: SID });
  first.deliver({ t: "m", s: 1, d: "one" }, { t: "m", s: 2, d: "two" });
  conn.send("a");
  conn.send("b");
  conn.send("c");
  first.deliver({ t: "ack", a: 1 });
  await tick(5);
  first.drop(1006);
  assert.equal(conn.state, "reconnecting");
  await until(() => FakeWebSocket.instances.length === 2);
  const second = FakeWebSocket.last();
  assert.match(second.url, new RegExp(`sid=${SID}&ack=2$`));
  // The server had received "b" too (its open frame says ack 2): only "c" is resent.
  second.accept({ sid: SID, resumed: true, ack: 2 });
  assert.deepEqual(second.sent.filter((frame) => frame.t === "m"), [{ t: "m", s: 3, d: "c" }]);
  second.deliver({ t: "m", s: 2, d: "two" }, { t: "m", s: 3, d: "three" });
  assert.deepEqual(messages(events), ["one", "two", "three"]);
  assert.equal(events.filter(([name]) => name === "open").length, 1, "a resume is not a new open");
});

test("falls back to long polling when the upgrade is refused, and remembers it", async () => {
  const storage = memoryStorage();
  const { conn, calls } = setup({ storage, auth: "t" });
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().drop(1006);
  const open = await answer(calls, /\/rt\/open\?v=1$/, 200, { t: "open", v: 1, sid: SID, resumed: false, ack: 0, ping: 25000, hold: 20000, resume: 30000, max_message: 65536, max_body: 1048576 });
  await tick();
  assert.equal(open.method, "POST");
  assert.deepEqual(open.body, { auth: "t" });
  assert.equal(conn.transport, "longpoll");
  await answer(calls, /\/rt\/poll\?v=1&sid=.*&ack=0&wait=1&att=\d+$/, 200, [{ t: "m", s: 1, d: "via poll" }]);
  await until(() => calls.some((call) => /ack=1&wait=1&att=\d+$/.test(call.url)));
  assert.ok(storage.map.size === 1, "websocket failure remembered once polling worked");

  // A new page load skips the WebSocket wait.
  FakeWebSocket.reset();
  const again = setup({ storage });
  await until(() => again.calls.length > 0);
  assert.match(again.calls[0].url, /\/rt\/open\?v=1$/);
  assert.equal(FakeWebSocket.instances.length, 0);
  conn.close();
  again.conn.close();
});

test("a remembered failure expires and WebSocket is tried again", async () => {
  const storage = memoryStorage();
  storage.setItem("switchboard:" + BASE, JSON.stringify({ websocket: Date.now() - 1 }));
  setup({ storage });
  await until(() => FakeWebSocket.last());
});

test("falls back when the upgrade hangs past the deadline", async () => {
  const { conn, calls } = setup({ connectTimeout: 40 });
  await until(() => FakeWebSocket.last());
  await until(() => calls.some((call) => /\/open\?/.test(call.url)), 1000);
  assert.equal(FakeWebSocket.last().closedWith, 1000, "the hung socket is abandoned");
  conn.close();
});

test("a socket that dies right after opening counts as blocked", async () => {
  const { conn, calls } = setup({ earlyCloseWindow: 10000 });
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().accept({ sid: SID });
  FakeWebSocket.last().deliver({ t: "m", s: 1, d: "x" });
  FakeWebSocket.last().drop(1006);
  // It resumes the same session over long polling, at once, and syncs acknowledgements.
  await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}&ack=1&wait=1&att=\\d+$`), 200, []);
  const sync = await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 200, [{ t: "ack", a: 0 }]);
  assert.deepEqual(sync.body, []);
  await tick();
  assert.equal(conn.transport, "longpoll");
  conn.close();
});

test("a socket closed 1012 (its session moved to another server) comes back on WebSocket", async () => {
  const { conn, calls } = setup({ earlyCloseWindow: 10000, backoff: { min: 1, max: 1, jitter: 0 } });
  await until(() => FakeWebSocket.last());
  const first = FakeWebSocket.last();
  first.accept({ sid: SID });
  first.deliver({ t: "m", s: 1, d: "x" });
  first.drop(1012);
  // Right after opening, but no proxy's doing: the same session, on a new socket.
  await until(() => FakeWebSocket.last() !== first, 1000);
  assert.match(FakeWebSocket.last().url, new RegExp(`sid=${SID}&ack=1`));
  assert.equal(conn.transport, "websocket");
  assert.ok(!calls.some((call) => /\/poll\?/.test(call.url)), "no fallback to polling");
  conn.close();
});

test("long polls cut before the hold time lead to short polling", async () => {
  const { conn, calls } = setup({ transports: ["longpoll", "poll"], pollInterval: 10 });
  await answer(calls, /\/open\?/, 200, { t: "open", v: 1, sid: SID, resumed: false, ack: 0, ping: 25000, hold: 400, resume: 30000, max_message: 65536, max_body: 1048576 });
  for (let cut = 0; cut < 2; cut++) {
    await until(() => calls.some((call) => /wait=1&att=\d+$/.test(call.url) && !call.cut));
    const poll = calls.find((call) => /wait=1&att=\d+$/.test(call.url) && !call.cut);
    poll.cut = true;
    await tick(150);
    poll.fail();
  }
  await until(() => calls.some((call) => /wait=0&att=\d+$/.test(call.url)), 1000);
  await answer(calls, /wait=0&att=\d+$/, 200, [{ t: "m", s: 1, d: "short" }]);
  await until(() => conn.transport === "poll");
  conn.close();
});

test("while on polling, a WebSocket probe takes over without loss or duplicates", async () => {
  const { conn, calls, events } = setup({ probeDelay: 20 });
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().drop(1006);
  await answer(calls, /\/open\?/, 200, { t: "open", v: 1, sid: SID, resumed: false, ack: 0, ping: 25000, hold: 20000, resume: 30000, max_message: 65536, max_body: 1048576 });
  await answer(calls, /ack=0&wait=1&att=\d+$/, 200, [{ t: "m", s: 1, d: 1 }, { t: "m", s: 2, d: 2 }]);
  conn.send("pending");
  await until(() => FakeWebSocket.instances.length === 2, 2000);
  const probe = FakeWebSocket.last();
  assert.match(probe.url, new RegExp(`sid=${SID}&ack=2$`));
  const heldPoll = calls.find((call) => /ack=2&wait=1&att=\d+$/.test(call.url));
  probe.accept({ sid: SID, resumed: true, ack: 0 });
  assert.equal(conn.transport, "websocket");
  assert.ok(heldPoll.aborted, "the poll is abandoned");
  // The unacknowledged message goes again over the socket; the server dedups it.
  assert.deepEqual(probe.sent.filter((frame) => frame.t === "m"), [{ t: "m", s: 1, d: "pending" }]);
  probe.deliver({ t: "m", s: 2, d: 2 }, { t: "m", s: 3, d: 3 });
  assert.deepEqual(messages(events), [1, 2, 3]);
  assert.deepEqual(
    events.filter(([name]) => name === "transport").map(([, name]) => name),
    ["websocket", "longpoll", "websocket"],
  );
  conn.close();
});

test("an unknown session resets: a new session, and the application is told", async () => {
  const { conn, events } = setup({ earlyCloseWindow: 0 });
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().accept({ sid: SID });
  FakeWebSocket.last().deliver({ t: "m", s: 1, d: "old" });
  conn.send("lost");
  FakeWebSocket.last().drop(1006);
  await until(() => FakeWebSocket.instances.length === 2);
  FakeWebSocket.last().drop(4404, "unknown_session");
  const reset = events.find(([name]) => name === "reset");
  assert.deepEqual(reset[1], { reason: "unknown_session", unsent: 1 });
  await until(() => FakeWebSocket.instances.length === 3);
  const fresh = FakeWebSocket.last();
  assert.doesNotMatch(fresh.url, /sid=/);
  fresh.accept({ sid: "f".repeat(32) });
  fresh.deliver({ t: "m", s: 1, d: "new" });
  assert.deepEqual(messages(events), ["old", "new"]);
  assert.equal(events.filter(([name]) => name === "open").length, 2);
  conn.send("after reset");
  assert.deepEqual(fresh.sent, [{ t: "m", s: 1, d: "after reset" }]);
});

test("close codes: application close ends, overflow resets, refused auth ends", async () => {
  let { conn, events } = setup();
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().accept({ sid: SID });
  FakeWebSocket.last().deliver({ t: "close", code: 4000, reason: "kicked" });
  assert.equal(conn.state, "closed");
  assert.deepEqual(events.at(-1), ["close", { code: 4000, reason: "kicked" }]);
  assert.throws(() => conn.send("x"), { code: "closed" });

  FakeWebSocket.reset();
  ({ conn, events } = setup());
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().accept({ sid: SID });
  FakeWebSocket.last().deliver({ t: "close", code: 4003, reason: "overflow" });
  assert.deepEqual(events.find(([name]) => name === "reset")[1], { reason: "overflow", unsent: 0 });
  await until(() => FakeWebSocket.instances.length === 2);
  conn.close();

  FakeWebSocket.reset();
  ({ conn, events } = setup());
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().drop(4401, "unauthorized");
  assert.equal(conn.state, "closed");
  assert.deepEqual(events.at(-1), ["close", { code: 4401, reason: "unauthorized" }]);
});

test("the send buffer is bounded and oversized messages are refused", async () => {
  const { conn } = setup({ maxBuffered: 3 });
  conn.send(1);
  conn.send(2);
  conn.send(3);
  assert.throws(() => conn.send(4), { code: "buffer_full" });
  assert.throws(() => conn.send("x".repeat(70000)), (error) => ["buffer_full", "too_large"].includes(error.code));
  conn.close();
  const other = setup();
  assert.throws(() => other.conn.send("가".repeat(30000)), { code: "too_large" });
  other.conn.close();
});

test("POST retries after a failure resend what the server has not acknowledged", async () => {
  const { conn, calls } = setup({ transports: ["longpoll"] });
  await answer(calls, /\/open\?/, 200, { t: "open", v: 1, sid: SID, resumed: false, ack: 0, ping: 25000, hold: 20000, resume: 30000, max_message: 65536, max_body: 1048576 });
  conn.send("하나");
  conn.send("둘");
  await until(() => calls.some((call) => call.method === "POST" && /poll/.test(call.url)));
  const first = calls.find((call) => call.method === "POST" && /poll/.test(call.url));
  assert.deepEqual(first.body.map((frame) => frame.s), [1, 2]);
  first.fail();
  const retry = await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 200, [{ t: "ack", a: 2 }]);
  assert.deepEqual(retry.body.map((frame) => frame.d), ["하나", "둘"]);
  conn.send("셋");
  const third = await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 200, [{ t: "ack", a: 3 }]);
  assert.deepEqual(third.body.map((frame) => frame.s), [3]);
  conn.close();
});

test("a refusal after the upgrade (e.g. 503) retries WebSocket instead of falling back", async () => {
  const { conn, calls } = setup();
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().drop(4503, "session_limit");
  assert.equal(conn.state, "connecting");
  await until(() => FakeWebSocket.instances.length === 2, 1000);
  assert.equal(calls.length, 0, "no polling: the server was reached over WebSocket");
});

test("a session refused for its address's rate or cap (429 / 4429) is retried with backoff, not given up", async () => {
  // Over WebSocket: close 4429 after the upgrade. The server was reached: WebSocket again, no fallback.
  const { conn, calls } = setup();
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().drop(4429, "open_rate_limited");
  assert.equal(conn.state, "connecting");
  await until(() => FakeWebSocket.instances.length === 2, 1000);
  FakeWebSocket.last().drop(4429, "address_session_limit");
  await until(() => FakeWebSocket.instances.length === 3, 1000);
  assert.equal(calls.length, 0, "no fallback to polling: the network is fine");
  FakeWebSocket.last().accept({ sid: SID });
  await tick();
  assert.equal(conn.state, "open");

  // Over polling: POST /open answered 429 twice, then the session opens.
  const polling = setup({ transports: ["longpoll"] });
  for (const error of ["open_rate_limited", "address_session_limit"]) {
    await answer(polling.calls, /\/open\?/, 429, { error, message: "slow down" });
    assert.equal(polling.conn.state, "connecting");
  }
  await answer(polling.calls, /\/open\?/, 200, OPEN);
  await tick();
  assert.equal(polling.conn.state, "open");
  assert.equal(polling.calls.filter((call) => /\/open\?/.test(call.url)).length, 3);
});

test("when polling fails too, the WebSocket failure is not remembered", async () => {
  const storage = memoryStorage();
  const { conn, calls } = setup({ storage });
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().drop(1006);
  // The server is down: the open request fails as well…
  await until(() => calls.some((call) => /\/open\?/.test(call.url)));
  calls.find((call) => /\/open\?/.test(call.url)).fail();
  // …and then it is back, and polling works.
  await answer(calls, /\/open\?/, 200, { t: "open", v: 1, sid: SID, resumed: false, ack: 0, ping: 25000, hold: 20000, resume: 30000, max_message: 65536, max_body: 1048576 });
  await tick();
  assert.equal(conn.transport, "longpoll");
  assert.equal(storage.map.size, 0, "a server outage says nothing about the network");
});

// --- Issue 9: hostile networks, round 2 -----------------------------------------------------------

test("after a fallback in mid-session, sends leave at once, before the first poll is answered", async () => {
  const { conn, calls, events } = setup({ earlyCloseWindow: 10000 });
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().accept({ sid: SID });
  FakeWebSocket.last().drop(1006);
  // The transport tells the truth at once: it is long polling that is being tried now.
  assert.equal(conn.transport, "longpoll");
  assert.equal(conn.state, "reconnecting");
  // The resume's first POST is answered; the long poll stays unanswered (the server is quiet).
  await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 200, [{ t: "ack", a: 0 }]);
  await tick();
  assert.equal(conn.state, "open", "a working POST proves the session is reachable over HTTP");
  conn.send("지금 👋");
  const post = await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 200, [{ t: "ack", a: 1 }]);
  assert.deepEqual(post.body, [{ t: "m", s: 1, d: "지금 👋" }]);
  assert.ok(calls.some((call) => /wait=1/.test(call.url) && !call.answered), "the long poll is still held");
  assert.deepEqual(
    events.filter(([name]) => name === "transport" || name === "state").map(([, arg]) => arg),
    ["websocket", "open", "longpoll", "reconnecting", "open"],
  );
  conn.close();
});

test("a long poll cut by a gateway (504 without the server's body) polls again at once, then short polls", async () => {
  const { conn, calls, events } = setup({ transports: ["longpoll", "poll"], pollInterval: 10 });
  await answer(calls, /\/open\?/, 200, openFrame({ sid: SID, hold: 400 }));
  for (let cut = 0; cut < 2; cut++) {
    await until(() => calls.some((call) => /wait=1/.test(call.url) && !call.answered));
    await tick(150);
    await answer(calls, /wait=1/, 504, null);
  }
  await answer(calls, /wait=0/, 200, [{ t: "m", s: 1, d: "short" }]);
  await tick();
  assert.equal(conn.transport, "poll");
  assert.ok(!calls.some((call) => call.method === "POST" && /\/poll\?/.test(call.url)), "nothing to resume after a cut");
  assert.ok(!events.some(([name, arg]) => name === "state" && arg === "reconnecting"), "a cut is no failure");
  assert.deepEqual(messages(events), ["short"]);
  conn.close();
});

test("a 504 with the server's JSON error body, or one that comes at once, is a failure, not a cut", async () => {
  const { conn, calls } = setup({ transports: ["longpoll", "poll"] });
  await answer(calls, /\/open\?/, 200, openFrame({ sid: SID, hold: 400 }));
  await until(() => calls.some((call) => /wait=1/.test(call.url)));
  await answer(calls, /wait=1/, 502, null);
  await tick();
  assert.equal(conn.state, "reconnecting");
  await tick(150);
  // Each try after a failed one starts with the resume's POST, alone; the polls follow its answer.
  await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 200, []);
  await answer(calls, /wait=1/, 504, { error: "x", message: "from the server" });
  await tick(50);
  await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 200, []);
  await until(() => calls.filter((call) => /wait=1/.test(call.url)).length === 3);
  assert.ok(!calls.some((call) => /wait=0/.test(call.url)));
  conn.close();
});

test("a socket cut after a silence comes back on WebSocket, with a keep-alive it remembers once it works", async () => {
  const storage = memoryStorage();
  const { conn, calls, events } = setup({ storage, earlyCloseWindow: 10000 });
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().accept({ sid: SID });
  await tick(900);
  FakeWebSocket.last().drop(1006);
  assert.equal(conn.transport, "websocket", "no fallback");
  await until(() => FakeWebSocket.instances.length === 2, 500);
  const second = FakeWebSocket.last();
  assert.equal(storage.getItem("switchboard:" + BASE), null, "not kept before a socket opened with it");
  second.accept({ sid: SID, resumed: true });
  assert.equal(conn.state, "open");
  assert.equal(JSON.parse(storage.getItem("switchboard:" + BASE)).keepalive.value, 1000);
  // Keep-alive every 1000 ms (the floor): a ping whenever nothing went either way for that long,
  // and not more often.
  await until(() => second.sent.some((frame) => frame.t === "ping"), 2000);
  await tick(1100);
  const pings = second.sent.filter((frame) => frame.t === "ping").length;
  assert.ok(pings >= 1 && pings <= 2, `${pings} pings in about 1.5 s`);
  assert.equal(calls.length, 0, "no polling");
  assert.equal(events.filter(([name, arg]) => name === "state" && arg === "reconnecting").length, 1);
  // With that keep-alive running, a socket that dies anyway was not cut for silence: fall back.
  second.drop(1006);
  assert.equal(conn.transport, "longpoll");
  conn.close();

  // The next page load starts with the keep-alive.
  FakeWebSocket.reset();
  const again = setup({ storage });
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().accept({ sid: SID });
  await until(() => FakeWebSocket.last().sent.some((frame) => frame.t === "ping"), 2000);
  again.conn.close();
});

test("no keep-alive is learned from our own dead-socket check, a server close, or a socket that cannot reopen", async () => {
  const storage = memoryStorage();
  const { conn } = setup({ storage, earlyCloseWindow: 0 });
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().accept({ sid: SID });
  await tick(800);
  FakeWebSocket.last().drop(4101, "heartbeat_timeout");
  await until(() => FakeWebSocket.instances.length === 2, 500);
  FakeWebSocket.last().accept({ sid: SID, resumed: true });
  assert.equal(conn._keepalive, undefined, "4101 is the server's time-out, not an idle killer");
  // A cut after a silence, and then the network is gone: the retry cannot open.
  await tick(800);
  FakeWebSocket.last().drop(1006);
  await until(() => FakeWebSocket.instances.length === 3, 500);
  FakeWebSocket.last().drop(1006);
  assert.equal(conn._keepalive, undefined, "an outage taught nothing");
  assert.equal(storage.getItem("switchboard:" + BASE), null);
  conn.close();
});

test("every transport request carries an increasing attach number; a failed probe renumbers the polls", async () => {
  const { conn, calls } = setup({ probeDelay: 20 });
  await until(() => FakeWebSocket.last());
  assert.equal(attOf(FakeWebSocket.last().url), 1);
  FakeWebSocket.last().drop(1006);
  await answer(calls, /\/open\?/, 200, OPEN);
  const first = await answer(calls, /wait=1/, 200, []);
  assert.equal(attOf(first.url), 2);
  const second = await answer(calls, /wait=1/, 200, []);
  assert.equal(attOf(second.url), 2, "one loop, one number: each poll takes over from the last");
  await until(() => FakeWebSocket.instances.length === 2, 2000);
  const probe = FakeWebSocket.last();
  assert.equal(attOf(probe.url), 3);
  // A poll sent while the probe is on its way keeps the loop's (lower) number: if it arrives after
  // the probe attached, the server refuses it instead of letting it take the session back.
  const during = await answer(calls, /wait=1/, 200, []);
  assert.equal(attOf(during.url), 2);
  probe.drop(1006);
  const after = await answer(calls, /wait=1/, 200, []);
  assert.equal(attOf(after.url), 4, "after a failed probe, polls are numbered above it");
  conn.close();
});

test("a late first WebSocket gets a polling session beside it; polling wins, the socket's session is closed", async () => {
  const { conn, calls, events } = setup({ raceAfter: 20 });
  await until(() => FakeWebSocket.last());
  const ws = FakeWebSocket.last();
  conn.send("first");
  await answer(calls, /\/open\?/, 200, OPEN);
  await tick();
  assert.equal(conn.transport, "longpoll");
  assert.equal(conn.state, "open");
  const post = await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 200, [{ t: "ack", a: 1 }]);
  assert.deepEqual(post.body, [{ t: "m", s: 1, d: "first" }]);
  // The socket opens after all, with a session of its own: closed at once, and the session in
  // use is upgraded to WebSocket straight away.
  ws.accept({ sid: "b".repeat(32) });
  assert.deepEqual(ws.sent, [{ t: "close" }]);
  assert.equal(ws.closedWith, 1000);
  await until(() => FakeWebSocket.instances.length === 2, 500);
  assert.match(FakeWebSocket.last().url, new RegExp(`sid=${SID}`));
  assert.equal(events.filter(([name]) => name === "open").length, 1);
  conn.close();
});

test("a late first WebSocket that opens before the polling session keeps the session; the other is closed", async () => {
  const { conn, calls, events } = setup({ raceAfter: 20 });
  await until(() => FakeWebSocket.last());
  await until(() => calls.some((call) => /\/open\?/.test(call.url)), 500);
  FakeWebSocket.last().accept({ sid: SID });
  assert.equal(conn.transport, "websocket");
  const other = "c".repeat(32);
  await answer(calls, /\/open\?/, 200, openFrame({ sid: other }));
  const goodbye = await answer(calls, new RegExp(`poll\\?v=1&sid=${other}$`), 200, []);
  assert.deepEqual(goodbye.body, [{ t: "close" }]);
  assert.equal(conn.transport, "websocket");
  assert.equal(events.filter(([name]) => name === "open").length, 1);
  conn.close();
});

test("a hanging first WebSocket: the race's session carries, and the socket is remembered as blocked", async () => {
  const storage = memoryStorage();
  const { conn, calls } = setup({ raceAfter: 20, connectTimeout: 1000, storage });
  await until(() => FakeWebSocket.last());
  const started = Date.now();
  await answer(calls, /\/open\?/, 200, OPEN);
  assert.ok(Date.now() - started < 500, "the session opens beside the socket, long before its deadline");
  await tick();
  assert.equal(conn.transport, "longpoll");
  await until(() => FakeWebSocket.last().closedWith === 1000, 2000);
  assert.equal(calls.filter((call) => /\/open\?/.test(call.url)).length, 1, "one session only");
  assert.ok(JSON.parse(storage.getItem("switchboard:" + BASE)).websocket > Date.now());
  conn.close();
});

test("frames of unknown types are ignored, before the open frame too, and so are non-objects", async () => {
  const { conn, events } = setup();
  await until(() => FakeWebSocket.last());
  const ws = FakeWebSocket.last();
  ws.deliverBatch({ t: "hint", v: 2 }, null, openFrame({ sid: SID }), { t: "later", s: 1 }, null, { t: "m", s: 1, d: "ok" });
  assert.equal(conn.state, "open");
  assert.deepEqual(messages(events), ["ok"]);
  conn.close();
});

// --- Issue 9, review: the paths around the fixes --------------------------------------------------

test("cuts count within a minute: a cut long after the last one polls again, it does not switch", async () => {
  const realNow = Date.now;
  let skew = 0;
  Date.now = () => realNow() + skew;
  try {
    // A long hold, and a clock the test moves: cuts after 2 s and after 61 s, with an answer between.
    const { conn, calls } = setup({ transports: ["longpoll", "poll"] });
    await answer(calls, /\/open\?/, 200, openFrame({ sid: SID, hold: 100000 }));
    await until(() => calls.some((call) => /wait=1/.test(call.url) && !call.answered));
    skew += 2000;
    await answer(calls, /wait=1/, 504, null);
    await answer(calls, /wait=1/, 200, [{ t: "m", s: 1, d: "between" }]);
    await until(() => calls.filter((call) => /wait=1/.test(call.url)).length === 3);
    skew += 61000;
    await answer(calls, /wait=1/, 504, null);
    await until(() => calls.filter((call) => /wait=1/.test(call.url)).length === 4);
    assert.equal(conn.transport, "longpoll");
    assert.ok(!calls.some((call) => /wait=0/.test(call.url)));
    conn.close();
  } finally {
    Date.now = realNow;
  }
});

test("cut after cut with nothing to fall back to backs off instead of polling in a loop", async () => {
  const { conn, calls } = setup({ transports: ["longpoll"], backoff: { min: 300, max: 300, jitter: 0 } });
  await answer(calls, /\/open\?/, 200, openFrame({ sid: SID, hold: 400 }));
  const polls = () => calls.filter((call) => /wait=1/.test(call.url));
  for (let cut = 1; cut <= 2; cut++) {
    await until(() => polls().length === cut);
    await tick(150);
    await answer(calls, /wait=1/, 504, null);
  }
  const cutAt = Date.now();
  await until(() => polls().length === 3, 1000);
  assert.ok(Date.now() - cutAt >= 250, "the third poll waited");
  assert.equal(conn.state, "open");
  conn.close();
});

test("a probe that took the session and then failed: polling resumes and probing goes on", async () => {
  const { conn, calls } = setup({ probeDelay: 20, connectTimeout: 100 });
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().drop(1006);
  await answer(calls, /\/open\?/, 200, OPEN);
  await until(() => FakeWebSocket.instances.length === 2, 2000);
  // The probe attached on the server: our held poll is answered 409; then the probe never opens.
  await answer(calls, /wait=1/, 409, { error: "superseded", message: "" });
  await until(() => calls.filter((call) => /wait=1/.test(call.url)).length === 2, 1000);
  assert.equal(conn.transport, "longpoll");
  await until(() => FakeWebSocket.instances.length === 3, 2000);
  conn.close();
});

test("close() ends the session over HTTP when no socket is open, after the messages not yet acknowledged", async () => {
  // Reconnecting: the socket is on its way, not open.
  let { conn, calls } = setup({ earlyCloseWindow: 0 });
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().accept({ sid: SID });
  FakeWebSocket.last().drop(1006);
  await until(() => FakeWebSocket.instances.length === 2, 500);
  conn.close();
  let goodbye = await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 200, []);
  assert.deepEqual(goodbye.body, [{ t: "close" }]);

  // Polling, a send in flight: the goodbye carries the message and is retried while busy (429).
  FakeWebSocket.reset();
  ({ conn, calls } = setup({ transports: ["longpoll"] }));
  await answer(calls, /\/open\?/, 200, OPEN);
  conn.send("마지막 말 👋");
  await until(() => calls.some((call) => call.method === "POST" && /poll/.test(call.url)));
  conn.close();
  await until(() => calls.filter((call) => call.method === "POST" && /poll/.test(call.url)).length === 2);
  goodbye = calls.filter((call) => call.method === "POST" && /poll/.test(call.url))[1];
  assert.deepEqual(goodbye.body, [{ t: "m", s: 1, d: "마지막 말 👋" }, { t: "close" }]);
  goodbye.answered = true;
  goodbye.answer(429, { error: "too_many_requests", message: "" });
  // The message's own POST is answered; the goodbye goes again.
  await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 200, [{ t: "ack", a: 1 }]);
  const again = await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 200, []);
  assert.deepEqual(again.body, goodbye.body);
});

test("a POST answered with a lower ack (the application was slow) sends the rest again", async () => {
  const { conn, calls } = setup({ transports: ["longpoll"] });
  await answer(calls, /\/open\?/, 200, OPEN);
  conn.send("a");
  conn.send("b");
  conn.send("c");
  const first = await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 200, [{ t: "ack", a: 1 }]);
  assert.deepEqual(first.body.map((frame) => frame.s), [1, 2, 3]);
  const rest = await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 200, [{ t: "ack", a: 3 }]);
  assert.deepEqual(rest.body.map((frame) => frame.s), [2, 3]);
  conn.close();
});

test("a reset while a POST of the old session is on its way: the new session's sends still go", async () => {
  const { conn, calls } = setup({ transports: ["longpoll"] });
  await answer(calls, /\/open\?/, 200, OPEN);
  conn.send("old");
  await until(() => calls.some((call) => call.method === "POST" && /poll/.test(call.url)));
  await answer(calls, /wait=1/, 404, { error: "unknown_session", message: "" });
  const other = "d".repeat(32);
  await answer(calls, /\/open\?/, 200, openFrame({ sid: other }));
  conn.send("new");
  // The old session's POST comes back (too late to matter).
  await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 404, { error: "unknown_session", message: "" });
  const post = await answer(calls, new RegExp(`poll\\?v=1&sid=${other}$`), 200, [{ t: "ack", a: 1 }]);
  assert.deepEqual(post.body, [{ t: "m", s: 1, d: "new" }]);
  conn.close();
});

test("the race: a refused socket is not remembered as blocked, and a session opened while the socket waits to retry is kept", async () => {
  const storage = memoryStorage();
  let { conn, calls, events } = setup({ raceAfter: 20, storage });
  await until(() => FakeWebSocket.last());
  const ws = FakeWebSocket.last();
  await answer(calls, /\/open\?/, 200, OPEN);
  await tick();
  ws.drop(4503, "session_limit");
  assert.equal(storage.getItem("switchboard:" + BASE), null, "the upgrade got through");
  conn.close();

  FakeWebSocket.reset();
  ({ conn, calls, events } = setup({ raceAfter: 20, backoff: { min: 100000, max: 100000 } }));
  await until(() => calls.some((call) => /\/open\?/.test(call.url)), 500);
  FakeWebSocket.last().drop(4503, "session_limit");
  await answer(calls, /\/open\?/, 200, OPEN);
  await tick();
  assert.equal(conn.transport, "longpoll");
  assert.equal(conn.state, "open");
  assert.equal(events.filter(([name]) => name === "open").length, 1);
  assert.ok(!calls.some((call) => call.method === "POST" && /\/poll\?/.test(call.url)), "no goodbye to the session in use");
  conn.close();
});

test("after an upgrade the socket acknowledges what polling delivered since the probe left", async () => {
  const { conn, calls } = setup({ probeDelay: 20 });
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().drop(1006);
  await answer(calls, /\/open\?/, 200, OPEN);
  await until(() => FakeWebSocket.instances.length === 2, 2000);
  const probe = FakeWebSocket.last();
  assert.match(probe.url, /ack=0$/);
  // Polling still delivers while the probe connects.
  await answer(calls, /wait=1/, 200, [{ t: "m", s: 1, d: 1 }, { t: "m", s: 2, d: 2 }]);
  await until(() => conn._rx === 2);
  probe.accept({ sid: SID, resumed: true });
  await until(() => probe.sent.some((frame) => frame.t === "ack"), 500);
  assert.deepEqual(probe.sent.find((frame) => frame.t === "ack"), { t: "ack", a: 2 });
  conn.close();
});

test("close() on an open socket sends a waiting low-priority message before the close", async () => {
  const { conn } = setup();
  await until(() => FakeWebSocket.last());
  const ws = FakeWebSocket.last();
  ws.accept({ sid: SID });
  conn.emit("typing", { on: false }, { lowPriority: true });
  conn.close();
  assert.deepEqual(ws.sent, [{ t: "m", s: 1, e: "typing", d: { on: false } }, { t: "close" }]);
});

test("taken over three times running by a transport that is not ours: reset, and a new session", async () => {
  const { conn, calls, events } = setup({ transports: ["longpoll"] });
  await answer(calls, /\/open\?/, 200, OPEN);
  for (let i = 0; i < 3; i++) {
    // After the first, each try starts with the resume's POST; its answer brings the poll.
    if (i) await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 200, []);
    await answer(calls, /wait=1/, 409, { error: "superseded", message: "" });
    await tick(50);
  }
  assert.deepEqual(events.find(([name]) => name === "reset")?.[1], { reason: "superseded", unsent: 0 });
  await until(() => calls.filter((call) => /\/open\?/.test(call.url)).length === 2);
  conn.close();
});

// --- Server-Sent Events (§5.7) -------------------------------------------------------------------

/** A session opened over SSE after a refused upgrade: the stream's call and its controller. */
async function overSse(options = {}) {
  const ctx = setup({ transports: undefined, ...options });
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().drop(1006);
  await answer(ctx.calls, /\/rt\/open\?v=1$/, 200, OPEN);
  const call = await until(() => ctx.calls.find((c) => /\/rt\/sse\?/.test(c.url) && !c.answered));
  const stream = call.stream();
  return { ...ctx, call, stream };
}

const posts = (calls) => calls.filter((call) => call.method === "POST" && /\/poll\?v=1&sid=/.test(call.url));

test("after a refused upgrade the session streams over SSE: messages in order, acks and sends in POSTs", async () => {
  const { conn, calls, events, call, stream } = await overSse();
  assert.match(call.url, new RegExp(`/rt/sse\\?v=1&sid=${SID}&ack=0&att=\\d+$`));
  assert.equal(call.method, undefined, "a plain GET");
  assert.equal(conn.transport, "sse");
  assert.equal(conn.state, "open");
  // The open event, a heartbeat, an event split over two chunks, two events in one chunk.
  stream.event(openFrame({ sid: SID, resumed: true }), `${SID}.0`);
  stream.push(":\n\n");
  stream.push(`id: ${SID}.1\ndata: {"t":"m","s":1,"d":"안녕하세`);
  stream.push(`요 👋"}\n\nid: ${SID}.2\r\ndata: {"t":"m","s":2,"b":"AP8="}\r\n\r\ndata: {"t":"m","s":1,"d":"dup"}\n\n`);
  await until(() => messages(events).length === 2);
  assert.deepEqual(messages(events)[0], "안녕하세요 👋");
  assert.deepEqual([...messages(events)[1]], [0, 255]);
  // Acknowledged within 100 ms, in a POST.
  const ack = await until(() => posts(calls)[0]);
  assert.deepEqual(ack.body, [{ t: "ack", a: 2 }]);
  ack.answer(200, [{ t: "ack", a: 0 }]);
  ack.answered = true;
  // A send goes up in a POST at once, with the ack of what came since.
  for (let s = 3; s <= 5; s++) stream.event({ t: "m", s, d: s });
  await until(() => messages(events).length === 5);
  conn.send({ text: "réponse ✓" });
  const send = await until(() => posts(calls)[1]);
  assert.deepEqual(send.body, [{ t: "m", s: 1, d: { text: "réponse ✓" } }, { t: "ack", a: 5 }]);
  send.answer(200, [{ t: "ack", a: 1 }]);
  send.answered = true;
  // 64 messages at once are acknowledged at once.
  for (let s = 6; s <= 69; s++) stream.event({ t: "m", s, d: s });
  const burst = await until(() => posts(calls)[2], 50);
  assert.deepEqual(burst.body, [{ t: "ack", a: 69 }]);
  assert.deepEqual(
    events.filter(([name]) => name === "transport").map(([, name]) => name),
    ["websocket", "sse"],
  );
  conn.close();
});

test("an SSE stream whose open event does not come in time (a buffering proxy) gives way to long polling, remembered", async () => {
  const storage = memoryStorage();
  const { conn, calls, events, call } = await overSse({ storage, connectTimeout: 60 });
  // The response started (its headers came), but nothing more: held by the intermediary.
  await until(() => call.aborted, 1000);
  await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}&ack=0&wait=1&att=\\d+$`), 200, [{ t: "m", s: 1, d: "polled" }]);
  await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 200, [{ t: "ack", a: 0 }]);
  await until(() => messages(events).length === 1);
  assert.equal(conn.transport, "longpoll");
  const remembered = JSON.parse(storage.getItem("switchboard:" + BASE));
  assert.ok(remembered.sse > Date.now() && remembered.websocket > Date.now(), JSON.stringify(remembered));
  // The next page load goes straight to long polling.
  FakeWebSocket.reset();
  const again = setup({ storage, transports: undefined });
  await answer(again.calls, /\/rt\/open\?v=1$/, 200, OPEN);
  await until(() => again.calls.some((c) => /wait=1/.test(c.url)));
  assert.equal(again.conn.transport, "longpoll");
  assert.ok(!again.calls.some((c) => /\/sse\?/.test(c.url)));
  assert.equal(FakeWebSocket.instances.length, 0);
});

test("an SSE stream whose open event comes but not its probe (held after the first chunk) gives way to long polling, remembered", async () => {
  const storage = memoryStorage();
  const { conn, calls, events, call, stream } = await overSse({ storage, connectTimeout: 60 });
  stream.event(openFrame({ sid: SID, resumed: true }), `${SID}.0`);
  stream.event({ t: "m", s: 1, d: "came with the open event" });
  await until(() => messages(events).length === 1);
  // No probe: the intermediary holds the rest of the stream.
  await until(() => call.aborted, 1000);
  await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}&ack=1&wait=1&att=\\d+$`), 200, [{ t: "m", s: 2, d: "polled" }]);
  await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 200, [{ t: "ack", a: 0 }]);
  await until(() => messages(events).length === 2);
  assert.deepEqual(messages(events), ["came with the open event", "polled"]);
  assert.equal(conn.transport, "longpoll");
  assert.deepEqual(events.filter(([name]) => name === "transport").map(([, name]) => name), ["websocket", "sse", "longpoll"]);
  const remembered = JSON.parse(storage.getItem("switchboard:" + BASE));
  assert.ok(remembered.sse > Date.now(), JSON.stringify(remembered));
});

test("an SSE stream whose probe comes stays, after the probe deadline", async () => {
  const { conn, calls, events, call, stream } = await overSse({ connectTimeout: 60 });
  stream.event(openFrame({ sid: SID, resumed: true }), `${SID}.0`);
  await tick(20);
  stream.event({ t: "ping" });
  await tick(100);
  stream.event({ t: "m", s: 1, d: "still streaming" });
  await until(() => messages(events).length === 1);
  assert.ok(!call.aborted);
  assert.equal(conn.transport, "sse");
  assert.ok(!calls.some((c) => /wait=1/.test(c.url)));
  conn.close();
});

test("a recycled stream is followed at once by the next one, from rx; the state stays open", async () => {
  const { conn, calls, events, stream } = await overSse();
  stream.event(openFrame({ sid: SID, resumed: true }));
  stream.event({ t: "ping" });
  for (let s = 1; s <= 3; s++) stream.event({ t: "m", s, d: s });
  stream.push("event: recycle\ndata:\n\n");
  const next = await until(() => calls.find((c) => /\/sse\?/.test(c.url) && !c.answered));
  assert.match(next.url, new RegExp(`sid=${SID}&ack=3&att=\\d+$`));
  const second = next.stream();
  // What the server had not seen acknowledged comes again: dropped.
  second.event(openFrame({ sid: SID, resumed: true, ack: 0 }));
  second.event({ t: "ping" });
  second.event({ t: "m", s: 3, d: 3 });
  second.event({ t: "m", s: 4, d: 4 });
  await until(() => messages(events).length === 4);
  assert.deepEqual(messages(events), [1, 2, 3, 4]);
  assert.deepEqual(events.filter(([name]) => name === "state").map(([, s]) => s), ["open"]);
  conn.close();
});

test("an SSE stream cut after it lived comes back on SSE; one cut before its open event falls back", async () => {
  const { conn, calls, events, stream } = await overSse({ earlyCloseWindow: 0 });
  stream.event(openFrame({ sid: SID, resumed: true }));
  stream.event({ t: "ping" });
  stream.event({ t: "m", s: 1, d: "one" });
  await until(() => messages(events).length === 1);
  await tick(5);
  stream.cut();
  const again = await until(() => calls.find((c) => /\/sse\?/.test(c.url) && !c.answered));
  assert.match(again.url, /ack=1&att=\d+$/);
  // The new stream is refused by something that is not the server (no JSON error): long polling.
  again.answered = true;
  again.answer(403, null);
  // A try after a failed one: the resume's POST goes first, the poll after its answer.
  await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 200, []);
  await until(() => calls.some((c) => /wait=1/.test(c.url)), 1000);
  assert.equal(conn.transport, "longpoll");
  conn.close();
});

test("the server's refusals of a stream: after a takeover, 404 resets; after a move, 401 ends", async () => {
  const { conn, calls, events, stream } = await overSse();
  stream.event(openFrame({ sid: SID, resumed: true }));
  stream.event({ t: "ping" });
  stream.push("event: superseded\ndata:\n\n");
  // Taken over, not by us: try again (after a short backoff), on SSE.
  const again = await until(() => calls.find((c) => /\/sse\?/.test(c.url) && !c.answered));
  again.answered = true;
  again.answer(404, { error: "unknown_session" });
  await until(() => events.some(([name]) => name === "reset"));
  assert.equal(events.find(([name]) => name === "reset")[1].reason, "unknown_session");
  conn.close();
  FakeWebSocket.reset();

  const second = await overSse();
  second.stream.event(openFrame({ sid: SID, resumed: true }));
  second.stream.event({ t: "ping" });
  second.stream.push("event: moved\ndata:\n\n");
  const moved = await until(() => second.calls.find((c) => /\/sse\?/.test(c.url) && !c.answered));
  moved.answered = true;
  moved.answer(401, { error: "unauthorized" });
  await until(() => second.conn.state === "closed");
  assert.deepEqual(second.events.find(([name]) => name === "close")[1], { code: 4401, reason: "unauthorized" });
});

test("from SSE a WebSocket probe takes over mid-stream, without loss or duplicates", async () => {
  const { conn, calls, events, call, stream } = await overSse({ probeDelay: 20 });
  stream.event(openFrame({ sid: SID, resumed: true }));
  stream.event({ t: "ping" });
  stream.event({ t: "m", s: 1, d: 1 });
  stream.event({ t: "m", s: 2, d: 2 });
  await until(() => FakeWebSocket.instances.length === 2, 2000);
  const probe = FakeWebSocket.last();
  assert.match(probe.url, new RegExp(`sid=${SID}&ack=2$`));
  assert.ok(attOf(probe.url) > attOf(call.url));
  probe.accept({ sid: SID, resumed: true, ack: 0 });
  assert.equal(conn.transport, "websocket");
  await until(() => call.aborted);
  probe.deliver({ t: "m", s: 2, d: 2 }, { t: "m", s: 3, d: 3 });
  assert.deepEqual(messages(events), [1, 2, 3]);
  assert.deepEqual(
    events.filter(([name]) => name === "transport").map(([, name]) => name),
    ["websocket", "sse", "websocket"],
  );
  assert.ok(!calls.some((c) => /wait=1/.test(c.url)), "no long poll on the way");
  conn.close();
});

// --- Issue 14: stats() ----------------------------------------------------------------------------

test("stats() through a fallback, an upgrade, a reconnect and a reset: the history, the counters, the round trip, a copy", async () => {
  // A clock the test sets around the round trips it times (the real one between them).
  const realNow = Date.now;
  let clock = null;
  Date.now = () => clock ?? realNow();
  try {
    const { conn, calls } = setup({ probeDelay: 20, earlyCloseWindow: 0 });
    const empty = { transport: null, state: "connecting", transports: [], attached: 0, fallbacks: 0, upgrades: 0, resends: 0, resets: 0, sent: 0, received: 0, rtt: null };
    assert.deepEqual(conn.stats(), empty);
    const resets = [];
    conn.on("reset", () => resets.push(conn.stats().resets));
    const started = realNow();

    // The upgrade is refused: long polling opens the session.
    await until(() => FakeWebSocket.last());
    FakeWebSocket.last().drop(1006);
    await answer(calls, /\/open\?/, 200, OPEN);
    await tick();
    let stats = conn.stats();
    assert.equal(stats.transport, "longpoll");
    assert.equal(stats.state, "open");
    assert.equal(stats.fallbacks, 1);
    assert.deepEqual(stats.transports.map(({ transport, why }) => [transport, why]), [["longpoll", "open"]]);
    assert.ok(stats.transports[0].at >= started && stats.transports[0].at <= realNow());
    assert.equal(stats.rtt, null, "no round trip yet");

    // A POST answered 40 ms after it left: the first round trip.
    let t = realNow();
    clock = t;
    conn.send("a");
    clock = null;
    conn.send("b");
    conn.send("c");
    const first = await until(() => posts(calls)[0]);
    assert.deepEqual(first.body.map((frame) => frame.s), [1]);
    clock = t + 40;
    first.answered = true;
    first.answer(200, [{ t: "ack", a: 1 }]);
    await tick(0);
    clock = null;
    assert.equal(conn.stats().rtt, 40);
    // "b" and "c" go up next; their POST is not answered before the probe takes over.
    const second = await until(() => posts(calls)[1]);
    assert.deepEqual(second.body.map((frame) => frame.s), [2, 3]);

    // The probe takes over: "b" and "c" go again on the socket (two resends); their ack, 80 ms
    // later, is the second round trip: 40 · 7/8 + 80 / 8 = 45.
    await until(() => FakeWebSocket.instances.length === 2, 2000);
    const probe = FakeWebSocket.last();
    t = realNow();
    clock = t;
    probe.accept({ sid: SID, resumed: true, ack: 1 });
    clock = null;
    assert.deepEqual(probe.sent.filter((frame) => frame.t === "m").map((frame) => frame.s), [2, 3]);
    clock = t + 80;
    probe.deliver({ t: "ack", a: 3 }, { t: "m", s: 1, d: "hi" });
    clock = null;
    stats = conn.stats();
    assert.deepEqual(
      stats.transports.map(({ transport, why }) => [transport, why]),
      [["longpoll", "open"], ["websocket", "upgrade"]],
    );
    assert.equal(stats.transports[1].at, t);
    assert.deepEqual(
      { ...stats, transports: undefined },
      { transport: "websocket", state: "open", transports: undefined, attached: 2, fallbacks: 1, upgrades: 1, resends: 2, resets: 0, sent: 3, received: 1, rtt: 45 },
    );

    // The socket is cut (after the early-close window): a new one resumes, on the same transport.
    await tick(5);
    probe.drop(1006);
    await until(() => FakeWebSocket.instances.length === 3, 1000);
    FakeWebSocket.last().accept({ sid: SID, resumed: true, ack: 3 });
    // The session expires on the server (overflow): a reset, and a new session.
    FakeWebSocket.last().deliver({ t: "close", code: 4003, reason: "overflow" });
    assert.deepEqual(resets, [1], "counted when the reset event fires");
    await until(() => FakeWebSocket.instances.length === 4, 1000);
    FakeWebSocket.last().accept({ sid: "e".repeat(32) });

    const snapshot = conn.stats();
    assert.deepEqual(
      snapshot.transports.map(({ transport, why }) => [transport, why]),
      [["longpoll", "open"], ["websocket", "upgrade"], ["websocket", "reconnect"], ["websocket", "reset"]],
    );
    const times = snapshot.transports.map((entry) => entry.at);
    assert.ok(times[2] >= times[0] && times[3] >= times[2], JSON.stringify(times));
    assert.deepEqual(
      { ...snapshot, transports: undefined },
      { transport: "websocket", state: "open", transports: undefined, attached: 4, fallbacks: 1, upgrades: 1, resends: 2, resets: 1, sent: 3, received: 1, rtt: 45 },
    );

    // A copy of plain data: it survives JSON, and changing it changes nothing in the connection.
    const json = JSON.parse(JSON.stringify(snapshot));
    assert.deepEqual(json, snapshot);
    assert.notEqual(conn.stats(), snapshot);
    snapshot.transports[0].why = "changed";
    snapshot.transports.push({ transport: "poll", at: 0, why: "fallback" });
    snapshot.fallbacks = 99;
    snapshot.rtt = 0;
    assert.deepEqual(conn.stats(), json);
    conn.close();
    assert.equal(conn.stats().transport, null);
    assert.equal(conn.stats().state, "closed");
  } finally {
    Date.now = realNow;
  }
});

test("stats() counts every move down (WebSocket refused, then an SSE stream killed early), not a recycled stream", async () => {
  const { conn, calls, stream } = await overSse();
  stream.event(openFrame({ sid: SID, resumed: true }));
  stream.event({ t: "ping" });
  stream.push("event: recycle\ndata:\n\n");
  const next = await until(() => calls.find((c) => /\/sse\?/.test(c.url) && !c.answered));
  const second = next.stream();
  second.event(openFrame({ sid: SID, resumed: true }));
  second.event({ t: "ping" });
  second.event({ t: "m", s: 1, d: "streamed" });
  await until(() => conn._rx === 1);
  let stats = conn.stats();
  assert.deepEqual(stats.transports.map(({ transport, why }) => [transport, why]), [["sse", "open"]], "a recycled stream goes on");
  assert.equal(stats.fallbacks, 1);
  // Its ack went up in a POST: answered, a round trip.
  await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 200, [{ t: "ack", a: 0 }]);
  await until(() => conn.stats().rtt !== null);
  assert.equal(typeof conn.stats().rtt, "number");
  // Killed right after opening (a proxy): long polling, whose first poll fails at once (and is
  // tried again: the resume's POST, still on its way, stands for the try, and the polls follow its
  // answer): still the fallback's entry.
  second.cut();
  await answer(calls, /wait=1/, 502, null);
  await tick(50);
  await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 200, [{ t: "ack", a: 0 }]);
  await until(() => calls.filter((c) => /wait=1/.test(c.url)).length === 2);
  await until(() => conn.state === "open" && conn.transport === "longpoll");
  stats = conn.stats();
  assert.deepEqual(stats.transports.map(({ transport, why }) => [transport, why]), [["sse", "open"], ["longpoll", "fallback"]]);
  assert.equal(stats.fallbacks, 2);
  assert.equal(stats.upgrades, 0);
  assert.equal(stats.received, 1);
  conn.close();
});

test("stats(): long polls cut twice fall back to short polling; trying long polls again is an upgrade", async () => {
  const { conn, calls } = setup({ transports: ["longpoll", "poll"], pollInterval: 10, probeDelay: 3 });
  await answer(calls, /\/open\?/, 200, openFrame({ sid: SID, hold: 400 }));
  for (let cut = 0; cut < 2; cut++) {
    await until(() => calls.some((call) => /wait=1/.test(call.url) && !call.answered));
    await tick(150);
    await answer(calls, /wait=1/, 504, null);
  }
  // A short poll is answered at once: a round trip.
  await answer(calls, /wait=0/, 200, []);
  await until(() => conn.stats().rtt !== null);
  assert.deepEqual(conn.stats().transports.map(({ transport, why }) => [transport, why]), [["longpoll", "open"], ["poll", "fallback"]], "the first cut is no entry");
  // After probeDelay × 10 (about 30 ms here), long polls are tried again.
  await until(() => conn.transport === "longpoll", 1000);
  const stats = conn.stats();
  assert.deepEqual(
    stats.transports.map(({ transport, why }) => [transport, why]),
    [["longpoll", "open"], ["poll", "fallback"], ["longpoll", "upgrade"]],
  );
  assert.equal(stats.fallbacks, 1);
  assert.equal(stats.upgrades, 1);
  assert.equal(stats.attached, 3);
  conn.close();
});

test("stats() keeps the latest 32 transports; attached counts them all", async () => {
  const { conn } = setup({ earlyCloseWindow: 0, backoff: { min: 1, max: 1, jitter: 0 } });
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().accept({ sid: SID });
  for (let i = 2; i <= 40; i++) {
    await tick(1);
    FakeWebSocket.last().drop(1006);
    await until(() => FakeWebSocket.instances.length === i, 1000);
    FakeWebSocket.last().accept({ sid: SID, resumed: true });
  }
  const stats = conn.stats();
  assert.equal(stats.attached, 40);
  assert.equal(stats.transports.length, 32);
  assert.ok(stats.transports.every(({ transport, why }) => transport === "websocket" && why === "reconnect"), "the first (open) is gone");
  assert.equal(stats.fallbacks, 0);
  conn.close();
});

test("stats(): a keep-alive ping answered by its pong is a round trip", async () => {
  const storage = memoryStorage();
  storage.setItem("switchboard:" + BASE, JSON.stringify({ keepalive: { value: 1000, until: Date.now() + 60000 } }));
  const { conn } = setup({ storage });
  await until(() => FakeWebSocket.last());
  const ws = FakeWebSocket.last();
  ws.accept({ sid: SID });
  await until(() => ws.sent.some((frame) => frame.t === "ping"), 2000);
  assert.equal(conn.stats().rtt, null);
  ws.deliver({ t: "pong" });
  assert.equal(typeof conn.stats().rtt, "number");
  conn.close();
});

// --- Endings a page's developer can fix: a wrong mount path, a disallowed origin ------------------

const closes = (events) => events.filter(([name]) => name === "close").map(([, info]) => info);
const resets = (events) => events.filter(([name]) => name === "reset");

test("a 404 without the server's body on the first POST /open ends with close not_found: two requests, no reset", async () => {
  // Default transports: the socket to a wrong path fails like any refused handshake (1006), then
  // the fallback's POST /open gets the app's own 404 page (not JSON).
  const { conn, calls, events } = setup({ transports: undefined });
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().drop(1006);
  await answer(calls, /\/rt\/open\?v=1$/, 404, null);
  await tick(200);
  assert.deepEqual(closes(events), [
    {
      code: 4404,
      reason: "not_found",
      message: "http://127.0.0.1:9/rt: no Switchboard mount point here (404): check the path given to connect",
    },
  ]);
  assert.equal(conn.state, "closed");
  assert.equal(conn.transport, null);
  assert.deepEqual(resets(events), []);
  assert.equal(FakeWebSocket.instances.length, 1);
  assert.equal(calls.length, 1, calls.map((call) => call.url).join(", "));
  await assert.rejects(conn.ready, { code: 4404, reason: "not_found" });

  // Another app's JSON 404 (`{"error":"Not Found"}`) is no Switchboard answer either.
  FakeWebSocket.reset();
  const other = setup({ transports: ["longpoll"] });
  await answer(other.calls, /\/open\?/, 404, { error: "Not Found" });
  await tick(100);
  assert.deepEqual(closes(other.events).map(({ code, reason }) => [code, reason]), [[4404, "not_found"]]);
  assert.equal(other.calls.length, 1);
});

test("a JSON 404 unknown_session still resets, on a poll, a POST and a stream", async () => {
  const { conn, calls, events } = setup({ transports: ["longpoll"] });
  await answer(calls, /\/open\?/, 200, OPEN);
  await answer(calls, /wait=1/, 404, { error: "unknown_session", message: "no such session" });
  await until(() => resets(events).length === 1);
  assert.deepEqual(resets(events)[0][1], { reason: "unknown_session", unsent: 0 });
  // A new session at once; its POST (of a message) finds it gone too.
  await answer(calls, /\/open\?/, 200, openFrame({ sid: "f".repeat(32) }));
  conn.send("hello");
  await answer(calls, /poll\?v=1&sid=f+$/, 404, { error: "unknown_session", message: "" });
  await until(() => resets(events).length === 2);
  assert.deepEqual(closes(events), []);
  assert.notEqual(conn.state, "closed");
});

test("once a session has opened, 404s that are not the server's are retried with backoff, then end not_found", async () => {
  const { conn, calls, events } = setup({ transports: ["longpoll"] });
  await answer(calls, /\/open\?/, 200, OPEN);
  // A proxy in front now answers 404 (its own page) to everything: the poll, then each try's POST.
  await answer(calls, /wait=1/, 404, null);
  await tick();
  assert.equal(conn.state, "reconnecting");
  for (let i = 0; i < 20 && conn.state !== "closed"; i++) {
    await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 404, null);
    await tick(30);
  }
  assert.deepEqual(closes(events).map(({ code, reason }) => [code, reason]), [[4404, "not_found"]]);
  assert.deepEqual(resets(events), []);
  // The open, one poll, and one POST for each of the 6 tries: no storm, and nothing after the end.
  const count = calls.length;
  assert.equal(count, 1 + 1 + 6, calls.map((call) => call.method + " " + call.url).join("\n"));
  await tick(100);
  assert.equal(calls.length, count);
  // The session had opened: `ready` stays resolved.
  assert.deepEqual(await conn.ready, { sid: SID, resumed: false });
});

test("a 404 that is not the server's, after a session opened, is no lost session: a try that works resumes it", async () => {
  const { conn, calls, events } = setup({ transports: ["longpoll"] });
  await answer(calls, /\/open\?/, 200, OPEN);
  await answer(calls, /wait=1/, 404, null);
  await tick(30);
  await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 200, [{ t: "ack", a: 0 }]);
  await until(() => conn.state === "open");
  const poll = await until(() => calls.find((call) => /wait=1/.test(call.url) && !call.answered));
  assert.match(poll.url, new RegExp(`sid=${SID}`));
  assert.deepEqual(resets(events), []);
  assert.deepEqual(closes(events), []);
});

test("a readable 403 origin_not_allowed ends with close, saying what to check", async () => {
  const { conn, calls, events } = setup({ transports: undefined });
  await until(() => FakeWebSocket.last());
  // The handshake's 403 is invisible to a page: a socket closed 1006. POST /open's is readable.
  FakeWebSocket.last().drop(1006);
  await answer(calls, /\/open\?/, 403, { error: "origin_not_allowed", message: "origin not allowed" });
  await tick(200);
  assert.deepEqual(closes(events), [
    {
      code: 4403,
      reason: "origin_not_allowed",
      message: "http://127.0.0.1:9/rt: the server does not allow this page's origin: add it with Builder::allowed_origins",
    },
  ]);
  assert.equal(conn.state, "closed");
  assert.equal(calls.length, 1);
  assert.equal(FakeWebSocket.instances.length, 1);
  await assert.rejects(conn.ready, { code: 4403, reason: "origin_not_allowed" });
});

test("WebSocket only: a refused handshake is explained over HTTP (origin, wrong path), asked until answered", async () => {
  // The server refuses the origin: the GET's 403 is readable.
  let { conn, calls, events } = setup({ transports: ["websocket"] });
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().drop(1006);
  let check = await answer(calls, /\/rt\/poll\?v=1$/, 403, { error: "origin_not_allowed", message: "" });
  assert.equal(check.method, "GET");
  await tick(50);
  assert.deepEqual(closes(events).map(({ code, reason }) => [code, reason]), [[4403, "origin_not_allowed"]]);
  assert.match(closes(events)[0].message, /allowed_origins/);
  assert.equal(conn.state, "closed");

  // A wrong path: not found.
  FakeWebSocket.reset();
  ({ conn, calls, events } = setup({ transports: ["websocket"] }));
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().drop(1006);
  await answer(calls, /\/rt\/poll\?v=1$/, 404, null);
  await tick(50);
  assert.deepEqual(closes(events).map(({ code, reason }) => [code, reason]), [[4404, "not_found"]]);

  // The server is down (no answer), then a gateway answers 502 without the server's body: asked
  // again after each next failure; once Switchboard answers (400: no sid), never again, and the
  // socket goes on retrying.
  FakeWebSocket.reset();
  ({ conn, calls, events } = setup({ transports: ["websocket"] }));
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().drop(1006);
  (await until(() => calls.find((call) => !call.answered))).fail();
  await until(() => FakeWebSocket.instances.length === 2);
  FakeWebSocket.last().drop(1006);
  await answer(calls, /\/rt\/poll\?v=1$/, 502, null);
  await until(() => FakeWebSocket.instances.length === 3);
  FakeWebSocket.last().drop(1006);
  await answer(calls, /\/rt\/poll\?v=1$/, 400, { error: "bad_request", message: "missing query parameter sid" });
  await until(() => FakeWebSocket.instances.length === 4);
  FakeWebSocket.last().drop(1006);
  await until(() => FakeWebSocket.instances.length === 5);
  assert.equal(calls.length, 3);
  assert.deepEqual(closes(events), []);
  FakeWebSocket.last().accept({ sid: SID });
  assert.equal(conn.state, "open");
});

test("a resume retried after a failure sends its POST alone; the polls follow its answer", async () => {
  const { conn, calls, events } = setup({ transports: ["longpoll"] });
  await answer(calls, /\/open\?/, 200, OPEN);
  // The server goes away (a restart): the poll fails at once, and so does each try's POST.
  (await until(() => calls.find((call) => /wait=1/.test(call.url) && !call.answered))).fail();
  for (let i = 0; i < 3; i++) {
    const post = await until(() => calls.find((call) => !call.answered && !call.aborted));
    assert.equal(post.method, "POST", `try ${i}: ${post.url}`);
    assert.deepEqual(post.body, []);
    assert.equal(calls.filter((call) => !call.answered && !call.aborted).length, 1, "one request per try");
    post.fail();
    await tick(30);
  }
  assert.equal(calls.filter((call) => /wait=1/.test(call.url)).length, 1);
  // Back, with the session: the POST's answer opens it, and the polls start.
  await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 200, [{ t: "ack", a: 0 }]);
  await until(() => conn.state === "open");
  const poll = await until(() => calls.find((call) => /wait=1/.test(call.url) && !call.answered));
  poll.answer(200, [{ t: "m", s: 1, d: "after" }]);
  poll.answered = true;
  await until(() => messages(events).length === 1);
  // Back without it (a restarted server): one 404, and a reset.
  const { calls: calls2, events: events2 } = setup({ transports: ["longpoll"] });
  await answer(calls2, /\/open\?/, 200, OPEN);
  (await until(() => calls2.find((call) => /wait=1/.test(call.url) && !call.answered))).fail();
  await answer(calls2, new RegExp(`poll\\?v=1&sid=${SID}$`), 404, { error: "unknown_session", message: "" });
  await until(() => resets(events2).length === 1);
  assert.equal(calls2.filter((call) => call.method === "GET").length, 1);
});

// --- Conveniences: once, ready ---------------------------------------------------------------------

test("once: called for the next event only; off removes it before; returns the connection", async () => {
  const { conn } = setup();
  const seen = [];
  const first = (state) => seen.push(["first", state]);
  const never = () => seen.push(["never"]);
  assert.equal(conn.once("state", first), conn);
  conn.once("state", never).off("state", never);
  conn.on("state", (state) => seen.push(["every", state]));
  // A listener added with both stays until off removes both.
  const both = (state) => seen.push(["both", state]);
  conn.on("state", both).once("state", both);
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().accept({ sid: SID });
  FakeWebSocket.last().drop(1006);
  assert.deepEqual(seen, [
    ["first", "open"],
    ["every", "open"],
    ["both", "open"],
    ["both", "open"],
    ["every", "reconnecting"],
    ["both", "reconnecting"],
  ]);
  conn.off("state", both);
  // off without a listener (or with one never added) removes nothing.
  conn.off("state").off("state", () => {});
  conn.close();
  assert.deepEqual(seen.at(-1), ["every", "closed"]);
  // Named events of the server too.
  FakeWebSocket.reset();
  const { conn: other } = setup();
  const chats = [];
  other.once("chat", (data, info) => chats.push([data, info.seq]));
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().accept({ sid: SID });
  FakeWebSocket.last().deliver({ t: "m", s: 1, e: "chat", d: "a" }, { t: "m", s: 2, e: "chat", d: "b" });
  assert.deepEqual(chats, [["a", 1]]);
});

test("ready resolves with the first open's info and stays so across a reset", async () => {
  const { conn } = setup();
  const ready = conn.ready;
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().accept({ sid: SID });
  assert.deepEqual(await ready, { sid: SID, resumed: false });
  FakeWebSocket.last().deliver({ t: "close", code: 4003, reason: "overflow" });
  await until(() => FakeWebSocket.instances.length === 2);
  FakeWebSocket.last().accept({ sid: "e".repeat(32) });
  assert.equal(conn.ready, ready);
  assert.deepEqual(await conn.ready, { sid: SID, resumed: false });
  // Closing after it opened changes nothing either.
  conn.close();
  assert.deepEqual(await conn.ready, { sid: SID, resumed: false });
});

test("ready rejects with the close info when the connection ends before opening; unused, it is not an unhandled rejection", async () => {
  const unhandled = [];
  const onUnhandled = (reason) => unhandled.push(reason);
  process.on("unhandledRejection", onUnhandled);
  try {
    const refused = setup({ transports: ["longpoll"] });
    await answer(refused.calls, /\/open\?/, 401, { error: "unauthorized", message: "who are you" });
    await assert.rejects(refused.conn.ready, (info) => {
      assert.deepEqual(info, { code: 4401, reason: "unauthorized" });
      return true;
    });
    // Closed by the page before it opened.
    const early = setup();
    early.conn.close();
    await assert.rejects(early.conn.ready, { code: 1000, reason: "closed by client" });
    // Nobody looks at this one's `ready`.
    const ignored = setup({ transports: ["longpoll"] });
    await answer(ignored.calls, /\/open\?/, 403, { error: "forbidden", message: "" });
    await tick(20);
    assert.equal(ignored.conn.state, "closed");
    assert.deepEqual(unhandled, []);
  } finally {
    process.off("unhandledRejection", onUnhandled);
  }
});

// --- Options ---------------------------------------------------------------------------------------

test("an option given as undefined means its default; an unknown or invalid one throws a TypeError naming it", async () => {
  const { conn } = setup({ transports: undefined, connectTimeout: undefined, backoff: undefined, auth: undefined });
  await until(() => FakeWebSocket.last());
  assert.equal(conn.transport, "websocket");
  const invalid = [
    [{ transports: "websocket" }, /option transports must be a non-empty list of distinct names of websocket,sse,longpoll,poll, not "websocket"/],
    [{ transports: [] }, /option transports must be/],
    [{ transports: ["ws"] }, /option transports must be .*not \["ws"\]/],
    [{ transports: ["poll", "poll"] }, /option transports must be/],
    [{ connectTimeout: "2500" }, /option connectTimeout must be a number of ms, at least 0, not "2500"/],
    [{ requestTimeout: -1 }, /option requestTimeout must be/],
    [{ pollInterval: NaN }, /option pollInterval must be/],
    [{ maxBuffered: 0.5 }, /option maxBuffered must be a whole number/],
    [{ backoff: { min: 5, mx: 20 } }, /option backoff must be \{ min, max, jitter \}/],
    [{ backoff: { jitter: 2 } }, /option backoff must be/],
    [{ storage: {} }, /option storage must be null or like localStorage/],
    [{ WebSocket: "ws" }, /option WebSocket must be a constructor/],
    [{ transport: ["poll"] }, /unknown option transport \(known: transports,auth,/],
  ];
  for (const [options, message] of invalid) {
    assert.throws(() => connect(BASE, options), (error) => error instanceof TypeError && message.test(error.message), JSON.stringify(options));
  }
  // Nothing was started by the refused ones.
  await tick(5);
  assert.equal(FakeWebSocket.instances.length, 1);
});

// --- Requests --------------------------------------------------------------------------------------

/** A connection open over WebSocket. */
async function openOverWebSocket(options) {
  const ctx = setup({ earlyCloseWindow: 0, ...options });
  await until(() => FakeWebSocket.last());
  FakeWebSocket.last().accept({ sid: SID });
  return { ...ctx, ws: FakeWebSocket.last() };
}

test("request: sends q, resolves with the reply's payload (JSON, text, binary), in any order; a reply is no message", async () => {
  const { conn, ws, events } = await openOverWebSocket();
  const first = conn.request("add", { a: 1, b: 2 });
  const second = conn.request(null, "안녕 👋");
  const third = conn.request("bytes", new Uint8Array([0, 255]));
  assert.deepEqual(ws.sent, [
    { t: "m", s: 1, q: 1, e: "add", d: { a: 1, b: 2 } },
    { t: "m", s: 2, q: 2, d: "안녕 👋" },
    { t: "m", s: 3, q: 3, e: "bytes", b: "AP8=" },
  ]);
  const chats = [];
  conn.on("sum", (data) => chats.push(data));
  ws.deliver(
    { t: "m", s: 1, p: 2, d: "네 🎉" },
    { t: "m", s: 2, d: "an ordinary message between" },
    { t: "m", s: 3, p: 1, e: "sum", d: { sum: 3 } },
    { t: "m", s: 4, p: 3, b: "AQI=" },
  );
  assert.deepEqual(await first, { sum: 3 });
  assert.equal(await second, "네 🎉");
  assert.deepEqual(await third, new Uint8Array([1, 2]));
  assert.deepEqual(messages(events), ["an ordinary message between"]);
  assert.deepEqual(chats, [], "a reply's event name fires nothing");
  // Replies are acknowledged like any message.
  await until(() => ws.sent.some((frame) => frame.t === "ack" && frame.a === 4), 1000);
  assert.equal(conn.stats().received, 4);
});

test("request: a time-out beyond setTimeout's range waits instead of firing at once", async () => {
  const { conn, ws } = await openOverWebSocket();
  let settled = false;
  const reply = conn.request("long", 1, { timeout: 2 ** 31 + 5 }).finally(() => (settled = true));
  await tick(20);
  assert.equal(settled, false);
  ws.deliver({ t: "m", s: 1, p: 1, d: "eventually" });
  assert.equal(await reply, "eventually");
});

test("request: times out with code timeout, and a late reply is dropped", async () => {
  const { conn, ws, events } = await openOverWebSocket();
  const started = Date.now();
  await assert.rejects(conn.request("slow", 1, { timeout: 30 }), (error) => error.code === "timeout" && error.message === "switchboard: timeout");
  assert.ok(Date.now() - started >= 25);
  ws.deliver({ t: "m", s: 1, p: 1, d: "too late" }, { t: "m", s: 2, d: "next" });
  assert.deepEqual(messages(events), ["next"]);
  // A reply to an id never asked for is dropped too; the next request has its own id.
  const next = conn.request("again", 2);
  assert.deepEqual(ws.sent.filter((frame) => frame.t === "m").at(-1), { t: "m", s: 2, q: 2, e: "again", d: 2 });
  ws.deliver({ t: "m", s: 3, p: 99, d: "nobody's" }, { t: "m", s: 4, p: 2, d: "mine" });
  assert.equal(await next, "mine");
  await assert.rejects(conn.request("x", 1, { timeout: "1s" }), (error) => error instanceof TypeError && /timeout must be/.test(error.message));
  await assert.rejects(conn.request("x", "x".repeat(70000)), (error) => error.code === "too_large");
});

test("request: pending across a WebSocket drop and a switch to long polling, resent with its id, answered once", async () => {
  const { conn, ws, calls } = await openOverWebSocket({ earlyCloseWindow: 10000 });
  ws.deliver({ t: "m", s: 1, d: "before" });
  const reply = conn.request("slow", { n: "하나" }, { timeout: 5000 });
  assert.deepEqual(ws.sent.at(-1), { t: "m", s: 1, q: 1, e: "slow", d: { n: "하나" } });
  // The socket dies before the server acknowledged the request: the resume POST sends it again.
  ws.drop(1006);
  assert.equal(conn.transport, "longpoll");
  const post = await answer(calls, new RegExp(`poll\\?v=1&sid=${SID}$`), 200, [{ t: "ack", a: 1 }]);
  assert.deepEqual(post.body, [{ t: "m", s: 1, q: 1, e: "slow", d: { n: "하나" } }]);
  let settled = 0;
  reply.then(() => settled++);
  // The reply comes in a poll answer, twice (the server resends what the client had not acknowledged).
  await answer(calls, /wait=1/, 200, [{ t: "m", s: 2, p: 1, d: "done" }, { t: "m", s: 2, p: 1, d: "done" }]);
  assert.equal(await reply, "done");
  await answer(calls, /ack=2&wait=1/, 200, [{ t: "m", s: 2, p: 1, d: "done" }, { t: "m", s: 3, d: "after" }]);
  await tick(5);
  assert.equal(settled, 1);
  conn.close();
});

test("request: a reset rejects what waits with code reset; close with closed; after close it rejects at once", async () => {
  const { conn, ws, events } = await openOverWebSocket();
  const waiting = conn.request("a", 1, { timeout: Infinity });
  ws.drop(4404, "unknown_session");
  await assert.rejects(waiting, (error) => error.code === "reset");
  assert.equal(events.find(([name]) => name === "reset")[1].unsent, 1);
  await until(() => FakeWebSocket.instances.length === 2);
  const fresh = FakeWebSocket.last();
  fresh.accept({ sid: "f".repeat(32) });
  // The new session counts its requests from 1 again.
  const next = conn.request("b", 2);
  assert.deepEqual(fresh.sent.at(-1), { t: "m", s: 1, q: 1, e: "b", d: 2 });
  conn.close();
  await assert.rejects(next, (error) => error.code === "closed");
  await assert.rejects(conn.request("c", 3), (error) => error.code === "closed");
});
