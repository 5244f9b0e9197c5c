// (g) Requests and replies (`conn.request`, protocol §3.1) in a real browser: on each transport
// forced, JSON with Korean and emoji, text, binary and many at once resolve with their replies, a
// late reply comes, an unanswered request times out, and no reply shows as a message; and a reply
// pending while a proxy kills the WebSocket arrives once, over the transport the client fell back to.

import assert from "node:assert/strict";
import { test } from "node:test";
import { cleanup, connectPage, events, received, report, scaled, startProxy, startServer, waitFor } from "./harness.mjs";

/** Runs the requests in the page; returns what each resolved with (or its error code). */
async function ask(page) {
  return page.evaluate(async () => {
    const conn = window.conn;
    const settle = (promise) => promise.then((value) => ({ value }), (error) => ({ error: error.code || String(error) }));
    const before = window.received.length;
    const binary = await conn.request("bin", new Uint8Array([0, 1, 254, 255]));
    const [json, text, many] = await Promise.all([
      conn.request("chat", { text: "안녕하세요 👋", n: 1 }),
      conn.request(null, "🎉 그냥 텍스트"),
      Promise.all(Array.from({ length: 50 }, (_, i) => conn.request("n", { i, text: `번호 ${i}` }))),
    ]);
    const later = await settle(conn.request(null, { cmd: "later", ms: 300, value: "나중에 ✅" }));
    const unanswered = await settle(conn.request(null, { cmd: "ignore" }, { timeout: 500 }));
    return {
      binary: { type: binary.constructor.name, bytes: Array.from(binary) },
      json,
      text,
      many,
      later,
      unanswered,
      messagesDuring: window.received.length - before,
    };
  });
}

for (const name of ["websocket", "sse", "longpoll", "poll"]) {
  test(`requests over ${name}: replies resolve, late ones too; unanswered times out; replies are no messages`, { timeout: scaled(60000) }, async (t) => {
    const defer = cleanup(t);
    const server = await startServer();
    defer(() => server.stop());
    const { page } = await connectPage(t, defer, server.url, { transports: [name] });
    const result = await ask(page);
    report({ scenario: `requests-${name}`, later: result.later, unanswered: result.unanswered });
    assert.deepEqual(result.binary, { type: "Uint8Array", bytes: [0, 1, 254, 255] });
    assert.deepEqual(result.json, { text: "안녕하세요 👋", n: 1 });
    assert.equal(result.text, "🎉 그냥 텍스트");
    assert.deepEqual(result.many, Array.from({ length: 50 }, (_, i) => ({ i, text: `번호 ${i}` })));
    assert.deepEqual(result.later, { value: "나중에 ✅" });
    assert.deepEqual(result.unanswered, { error: "timeout" });
    assert.equal(result.messagesDuring, 0, "a reply is not a message event");
    // Ordinary messages still flow after the replies.
    await page.evaluate(() => window.conn.send("after 요청"));
    await waitFor(page, `window.received.some((r) => r.value === "after 요청")`, scaled(10000), "the echo after the requests");
    const log = await events(page);
    assert.deepEqual([...new Set(log.filter((e) => e.type === "transport").map((e) => e.arg))], [name]);
    assert.deepEqual(log.filter((e) => ["reset", "close"].includes(e.type)), []);
  });
}

test("a reply pending while a proxy kills the WebSocket comes once, over long polling", { timeout: scaled(60000) }, async (t) => {
  const defer = cleanup(t);
  const server = await startServer();
  defer(() => server.stop());
  const proxy = await startProxy(server.port, "kill-ws-after-1s");
  defer(() => proxy.close());
  const { page } = await connectPage(t, defer, proxy.url, { transports: ["websocket", "longpoll"] });
  // Asked right after the socket opened; answered 2.5 s later, when the socket (killed 1 s after
  // opening) has long gone and the session is on long polling.
  const outcome = await page.evaluate(async () => {
    const conn = window.conn;
    const asked = { transport: conn.transport, t: performance.now() - window.tConnect };
    let resolutions = 0;
    const value = await conn.request("later", { cmd: "later", ms: 2500, value: { text: "기다렸어요 ⏳" } }, { timeout: 15000 }).then((v) => {
      resolutions++;
      return v;
    });
    const answered = { transport: conn.transport, t: performance.now() - window.tConnect };
    // Time for a duplicate to show, if the reply came twice.
    await new Promise((wake) => setTimeout(wake, 1500));
    return { asked, answered, value, resolutions, messages: window.received.map((r) => r.value) };
  });
  const log = await events(page);
  report({ scenario: "request-across-ws-kill", ...outcome, killed: proxy.stats.wsKilled, events: log.map((e) => `${e.type}:${JSON.stringify(e.arg)}@${e.t}`) });
  assert.equal(outcome.asked.transport, "websocket");
  assert.ok(proxy.stats.wsKilled >= 1, "the proxy killed the socket");
  assert.equal(outcome.answered.transport, "longpoll");
  assert.deepEqual(outcome.value, { text: "기다렸어요 ⏳" });
  assert.equal(outcome.resolutions, 1);
  // The first echo only: the reply is no message, and nothing came twice.
  assert.equal((await received(page)).length, 1);
  assert.deepEqual(await page.evaluate(() => window.duplicates), []);
  assert.deepEqual(log.filter((e) => ["reset", "close"].includes(e.type)), []);
});
