// (e) Behind a real nginx, with the configurations the deployment guide documents (docs/nginx/):
//
// - switchboard.conf: the client gets onto WebSocket and a stream flows both ways, complete and in
//   order; long polls held for the server's full hold time pass nginx (a short hold, several
//   times over, in the browser; and once the default 20 s hold, over plain HTTP); the access log
//   never contains a session id;
// - no-upgrade.conf (no WebSocket upgrade headers, as in many real configurations): the client falls
//   back to Server-Sent Events at once and works, also with nginx's response buffering forced on
//   (fallback.test.mjs's `buffer-responses` and `buffer-after-first` proxies are the buffering
//   intermediaries the client must detect).
//
// Needs /usr/sbin/nginx (scripts/test.sh installs it); fails, rather than skips, without it.

import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import {
  FIRST_MESSAGE_BOUND_MS,
  MAX_ECHO_DELAY_MS,
  checkSequence,
  checkSeries,
  cleanup,
  connectPage,
  events,
  exchange,
  maxEchoDelayMs,
  received,
  REPO_ROOT,
  report,
  scaled,
  startServer,
  waitFor,
  websockets,
} from "./harness.mjs";
import { startNginx } from "./nginx.mjs";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Parses the access log written with the `switchboard` log_format of docs/nginx/*.conf. */
function parseAccessLog(text) {
  const line = /^\S+ \[[^\]]+\] "(\S+) (\S+) [^"]*" (\d{3}) \d+ ([\d.]+) /;
  return text
    .split("\n")
    .filter(Boolean)
    .map((raw) => {
      const match = line.exec(raw);
      assert.ok(match, `access log line not in the expected format: ${raw}`);
      return { method: match[1], path: match[2], status: Number(match[3]), seconds: Number(match[4]) };
    });
}

/** The checks every test makes on the access log: it is being written, and never holds a sid. */
function checkAccessLog(nginx) {
  const text = nginx.accessLog();
  assert.ok(text.length > 0, "nginx wrote no access log");
  assert.ok(!/sid=/.test(text), "the access log contains a session id (sid=)");
  assert.ok(!/\?/.test(text), "the access log contains a query string");
  return parseAccessLog(text);
}

/** The page's failed requests and HTTP errors (redacted by openPage). */
const pageErrors = (page) => page.logs.filter((line) => /^(http [45]\d\d|failed) /.test(line));

test("switchboard.conf: WebSocket through nginx, both directions complete and in order", { timeout: scaled(180000) }, async (t) => {
  const defer = cleanup(t);
  const server = await startServer();
  defer(() => server.stop());
  const nginx = await startNginx({ config: "switchboard", upstreamPort: server.port });
  defer(() => nginx.stop());
  const { browser, page, firstMs } = await connectPage(t, defer, nginx.url, {});
  const firstTransport = await page.evaluate(() => window.received[0].transport);

  await exchange(page, { tag: "A", echoes: 300, stream: 500 });
  const maxEchoMs = await maxEchoDelayMs(page, "A");
  const messages = await received(page);
  const log = await events(page);
  const transports = log.filter((e) => e.type === "transport").map((e) => e.arg);
  const sockets = await websockets(page);
  const finalTransport = await page.evaluate(() => window.conn.transport);
  const sequenceProblems = await checkSequence(page);

  // A proxied WebSocket is logged when it closes: end it, then look for its 101.
  await browser.close();
  let entries = [];
  for (let i = 0; i < 100; i++) {
    entries = parseAccessLog(nginx.accessLog());
    if (entries.some((e) => e.path === "/rt/ws" && e.status === 101)) break;
    await sleep(50);
  }
  report({
    scenario: "nginx-switchboard.conf-websocket",
    transport: finalTransport,
    firstMessageMs: Math.round(firstMs),
    firstMessageTransport: firstTransport,
    maxEchoDelayMs: maxEchoMs,
    transportEvents: transports,
    websockets: sockets,
    accessLog: entries.map((e) => `${e.method} ${e.path} ${e.status}`),
  });

  assert.ok(
    firstMs <= FIRST_MESSAGE_BOUND_MS,
    `first message after ${Math.round(firstMs)} ms (bound ${FIRST_MESSAGE_BOUND_MS} ms)`,
  );
  assert.equal(firstTransport, "websocket");
  assert.deepEqual([...new Set(transports)], ["websocket"], `transport events: ${transports}`);
  assert.equal(finalTransport, "websocket");
  assert.deepEqual(
    [...checkSeries(messages, { tag: "A", echoes: 300, stream: 500 }), ...sequenceProblems],
    [],
  );
  assert.ok(maxEchoMs <= MAX_ECHO_DELAY_MS, `an echo took ${maxEchoMs} ms`);
  assert.deepEqual(log.filter((e) => e.type === "reset" || e.type === "close"), []);
  entries = checkAccessLog(nginx);
  assert.ok(
    entries.some((e) => e.path === "/rt/ws" && e.status === 101),
    `no upgraded WebSocket (101) in the access log: ${nginx.accessLog()}`,
  );
});

test("switchboard.conf: long polls held for the full hold time pass nginx", { timeout: scaled(180000) }, async (t) => {
  const HOLD_MS = 3000;
  const HOLDS = 3;
  const defer = cleanup(t);
  const server = await startServer({ hold: HOLD_MS });
  defer(() => server.stop());
  const nginx = await startNginx({ config: "switchboard", upstreamPort: server.port });
  defer(() => nginx.stop());
  const { page, firstMs } = await connectPage(t, defer, nginx.url, { transports: ["longpoll"] });

  // Idle across several holds: each long poll is held by the server for HOLD_MS, answered `[]`
  // through nginx, and the client polls again; it must neither take them for cut nor fail.
  await sleep(HOLDS * HOLD_MS + 1500);
  await exchange(page, { tag: "H", echoes: 100, stream: 200 });
  const maxEchoMs = await maxEchoDelayMs(page, "H");
  const messages = await received(page);
  const log = await events(page);
  const transports = log.filter((e) => e.type === "transport").map((e) => e.arg);
  const { transport, state } = await page.evaluate(() => ({
    transport: window.conn.transport,
    state: window.conn.state,
  }));
  const entries = checkAccessLog(nginx);
  const polls = entries.filter((e) => e.method === "GET" && e.path === "/rt/poll");
  const held = polls.filter((e) => e.status === 200 && e.seconds >= (HOLD_MS - 100) / 1000);
  const errors = pageErrors(page);
  report({
    scenario: "nginx-switchboard.conf-longpoll-holds",
    transport,
    firstMessageMs: Math.round(firstMs),
    holdMs: HOLD_MS,
    maxEchoDelayMs: maxEchoMs,
    transportEvents: transports,
    longPolls: polls.length,
    heldFullHold: held.map((e) => e.seconds),
    statuses: [...new Set(entries.map((e) => e.status))],
    pageErrors: errors,
  });

  assert.ok(
    firstMs <= FIRST_MESSAGE_BOUND_MS,
    `first message after ${Math.round(firstMs)} ms (bound ${FIRST_MESSAGE_BOUND_MS} ms)`,
  );
  assert.ok(held.length >= HOLDS, `only ${held.length} long polls were held for ${HOLD_MS} ms: ${JSON.stringify(polls)}`);
  assert.deepEqual(entries.filter((e) => e.status >= 500), [], "nginx answered 5xx (timeout or upstream error)");
  assert.deepEqual(errors, [], "the page saw failed requests or HTTP errors");
  assert.deepEqual([...new Set(transports)], ["longpoll"], `transport events: ${transports}`);
  assert.equal(transport, "longpoll");
  assert.equal(state, "open");
  assert.deepEqual(log.filter((e) => e.type === "reset" || e.type === "close"), []);
  assert.deepEqual(
    [...checkSeries(messages, { tag: "H", echoes: 100, stream: 200 }), ...(await checkSequence(page))],
    [],
  );
  assert.ok(maxEchoMs <= MAX_ECHO_DELAY_MS, `an echo took ${maxEchoMs} ms`);
});

test("switchboard.conf: a long poll held for the default 20 s hold passes nginx", { timeout: scaled(90000) }, async (t) => {
  const defer = cleanup(t);
  const server = await startServer(); // default hold: 20 s
  defer(() => server.stop());
  const nginx = await startNginx({ config: "switchboard", upstreamPort: server.port });
  defer(() => nginx.stop());

  const opened = await fetch(`${nginx.url}/rt/open?v=1`, { method: "POST" });
  assert.equal(opened.status, 200);
  const open = await opened.json();
  assert.equal(open.hold, 20000);
  const started = Date.now();
  const answer = await fetch(`${nginx.url}/rt/poll?v=1&sid=${open.sid}&ack=0&wait=1`);
  const body = await answer.text();
  const heldMs = Date.now() - started;
  report({ scenario: "nginx-switchboard.conf-default-hold", status: answer.status, heldMs });
  assert.equal(answer.status, 200, `answer: ${answer.status} ${body}`);
  assert.equal(body, "[]");
  assert.ok(heldMs >= 19500, `the long poll came back after ${heldMs} ms, before the 20 s hold`);
  // nginx writes the log line after the response has gone out: give it a moment (bounded).
  const held = (entries) => entries.some((e) => e.path === "/rt/poll" && e.status === 200 && e.seconds >= 19.5);
  let entries = checkAccessLog(nginx);
  for (let wait = 0; wait < 40 && !held(entries); wait++) {
    await new Promise((wake) => setTimeout(wake, 50));
    entries = checkAccessLog(nginx);
  }
  assert.ok(held(entries), `no 20 s long poll in the access log: ${nginx.accessLog()}`);
});

/**
 * no-upgrade.conf as it is (streamed answers pass: `proxy_buffering off`, and Switchboard's
 * `X-Accel-Buffering: no`), and the same configuration with response buffering forced on (nginx
 * told to ignore that header). nginx 1.22 buffering a response still hands on what it has read as
 * soon as the client can take it, so the stream flows and the client rightly stays on SSE (its
 * probe after the open event comes in time). Before the server's nudge (a comment 50 ms after a
 * write of messages, `transport/sse.rs`) about 1 run in 17 had the tail of a burst held until the
 * next heartbeat, 15 s later; the echo bound below catches that. The intermediaries that do hold a
 * stream back are fallback.test.mjs's `buffer-responses` and `buffer-after-first` proxies.
 */
const NO_UPGRADE = [
  { name: "no-upgrade.conf", config: "noUpgrade", expected: "sse" },
  { name: "no-upgrade.conf with buffering forced on", config: "buffered", expected: "sse" },
];

/** no-upgrade.conf with nginx buffering every answer whatever the upstream says. */
function bufferedConfig(t) {
  const text = fs.readFileSync(path.join(REPO_ROOT, "docs", "nginx", "no-upgrade.conf"), "utf8");
  const buffered = text.replace("proxy_buffering off;", "proxy_buffering on; proxy_ignore_headers X-Accel-Buffering;");
  assert.notEqual(buffered, text, "no-upgrade.conf no longer says proxy_buffering off");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sb-nginx-buffered-"));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, "buffered.conf");
  fs.writeFileSync(file, buffered);
  return file;
}

for (const { name, config, expected } of NO_UPGRADE) {
  test(`${name}: the client falls back to ${expected} and works`, { timeout: scaled(180000) }, async (t) => {
    const defer = cleanup(t);
    const server = await startServer();
    defer(() => server.stop());
    const nginx = await startNginx({ config: config === "buffered" ? bufferedConfig(t) : config, upstreamPort: server.port });
    defer(() => nginx.stop());
    const { page, firstMs } = await connectPage(t, defer, nginx.url, {});
    const firstTransport = await page.evaluate(() => window.received[0].transport);

    await waitFor(
      page,
      `window.conn.transport === ${JSON.stringify(expected)} && window.conn.state === "open"`,
      scaled(30000),
      expected,
    );
    await exchange(page, { tag: "N", echoes: 300, stream: 500 });
    const maxEchoMs = await maxEchoDelayMs(page, "N");
    const messages = await received(page);
    const log = await events(page);
    const transports = log.filter((e) => e.type === "transport").map((e) => `${e.arg}@${e.t}`);
    const finalTransport = await page.evaluate(() => window.conn.transport);
    const settledMs = log.find((e) => e.type === "transport" && e.arg === expected)?.t;
    const entries = checkAccessLog(nginx);
    const upgrades = entries.filter((e) => e.path === "/rt/ws");
    report({
      scenario: `nginx-${name}`,
      settledMs: Math.round(settledMs),
      transport: finalTransport,
      firstMessageMs: Math.round(firstMs),
      firstMessageTransport: firstTransport,
      maxEchoDelayMs: maxEchoMs,
      transportEvents: transports,
      websockets: await websockets(page),
      websocketAttempts: upgrades.map((e) => e.status),
    });

    // Behind the buffering proxy the first message waits for the client to give up on its stream
    // (no open event, or no probe after it, within `connectTimeout`, 2.5 s).
    const bound = FIRST_MESSAGE_BOUND_MS + (expected === "sse" ? 0 : 2500);
    assert.ok(firstMs <= bound, `first message after ${Math.round(firstMs)} ms (bound ${bound} ms)`);
    assert.equal(finalTransport, expected, `transport events: ${transports.join(", ")}`);
    if (expected === "longpoll") {
      const streams = entries.filter((e) => e.path === "/rt/sse");
      assert.ok(streams.length >= 1, "the client never tried SSE");
      assert.ok(settledMs <= scaled(10000), `on long polling only after ${settledMs} ms`);
    }
    assert.ok(upgrades.length >= 1, "the client never tried a WebSocket");
    assert.ok(
      upgrades.every((e) => e.status !== 101),
      `a WebSocket was upgraded through no-upgrade.conf: ${JSON.stringify(upgrades)}`,
    );
    assert.deepEqual(
      [...checkSeries(messages, { tag: "N", echoes: 300, stream: 500 }), ...(await checkSequence(page))],
      [],
    );
    assert.ok(maxEchoMs <= MAX_ECHO_DELAY_MS, `an echo took ${maxEchoMs} ms`);
    assert.deepEqual(log.filter((e) => e.type === "reset" || e.type === "close"), []);
  });
}
