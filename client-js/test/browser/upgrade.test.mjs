// (c) Upgrade while messages flow: start behind a proxy that refuses WebSocket upgrades, get onto
// Server-Sent Events (the default order) or long polling (SSE left out) with a stream flowing both
// ways, then let upgrades through: the client must switch to WebSocket mid-flow, and every message
// must arrive exactly once, in order, both ways.

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  FIRST_MESSAGE_BOUND_MS,
  MAX_ECHO_DELAY_MS,
  maxEchoDelayMs,
  checkSequence,
  checkSeries,
  classify,
  cleanup,
  connectPage,
  events,
  received,
  report,
  scaled,
  startProxy,
  startServer,
  waitFor,
  websockets,
} from "./harness.mjs";

const STREAM = 2000;
const STREAM_MS = 8000;

const FROM = [
  { from: "sse", label: "Server-Sent Events", options: {} },
  { from: "longpoll", label: "long polling", options: { transports: ["websocket", "longpoll", "poll"] } },
];

for (const { from, label, options } of FROM) {
  test(`upgrade from ${label} to WebSocket while messages flow`, { timeout: scaled(240000) }, async (t) => {
    const defer = cleanup(t);
    const server = await startServer();
    defer(() => server.stop());
    const proxy = await startProxy(server.port, "refuse-upgrade");
    defer(() => proxy.close());
    const { page, firstMs } = await connectPage(t, defer, proxy.url, options);
    assert.ok(
      firstMs <= FIRST_MESSAGE_BOUND_MS,
      `first message after ${Math.round(firstMs)} ms (bound ${FIRST_MESSAGE_BOUND_MS} ms)`,
    );
    await waitFor(page, `window.conn.transport === "${from}"`, scaled(30000), label);

    // Server → client: 2000 texts over 8 s; client → server: one payload every 20 ms, echoed.
    await page.evaluate(
      ({ count, ms }) => {
        window.conn.send({ cmd: "stream", count, prefix: "U/s", ms });
        window.startSending("U", 20);
      },
      { count: STREAM, ms: STREAM_MS },
    );
    await waitFor(
      page,
      `window.counts.U?.stream >= 100 && window.counts.U?.echo >= 20 && window.conn.transport === "${from}"`,
      scaled(30000),
      `messages flowing both ways over ${label}`,
    );
    // `transport` also names a transport being tried: the switch is the first "websocket" after now.
    const openedAt = await page.evaluate(() => {
      window.upgradeFrom = window.events.length;
      return performance.now() - window.tConnect;
    });
    proxy.setMode("pass");

    await waitFor(
      page,
      `window.events.slice(window.upgradeFrom).some((e) => e.type === "transport" && e.arg === "websocket")`,
      scaled(60000),
      "the switch to WebSocket",
    );
    // Keep sending a while on the WebSocket before stopping.
    await page.evaluate(() => {
      window.echoesAtSwitch = window.counts.U.echo;
    });
    await waitFor(
      page,
      "window.counts.U.echo >= window.echoesAtSwitch + 50",
      scaled(30000),
      "echoes after the switch",
    );
    const sent = await page.evaluate(() => {
      window.stopSending();
      return window.sent.U;
    });
    await waitFor(
      page,
      `window.counts.U.echo >= ${sent} && window.counts.U.stream >= ${STREAM}`,
      scaled(60000),
      `${sent} echoes and ${STREAM} streamed messages`,
    );

    const messages = await received(page);
    const log = await events(page);
    const switchedAt = log.find((e) => e.type === "transport" && e.arg === "websocket" && e.t >= openedAt).t;
    const series = messages.filter((m) => classify(m.value)?.tag === "U");
    const onLongpoll = series.filter((m) => m.t < switchedAt).length;
    const onWebsocket = series.filter((m) => m.t >= switchedAt).length;
    const streamedAfter = series.filter(
      (m) => typeof m.value === "string" && m.value.startsWith("U/s ") && m.t >= switchedAt,
    ).length;
    const finalTransport = await page.evaluate(() => window.conn.transport);
    const maxEchoMs = await maxEchoDelayMs(page, "U");
    report({
      scenario: `upgrade-mid-stream-from-${from}`,
      transport: finalTransport,
      firstMessageMs: Math.round(firstMs),
      upgradesAllowedAtMs: Math.round(openedAt),
      websocketAtMs: switchedAt,
      sent,
      maxEchoDelayMs: maxEchoMs,
      receivedBeforeSwitch: onLongpoll,
      receivedAfterSwitch: onWebsocket,
      streamedAfterSwitch: streamedAfter,
      transportEvents: log.filter((e) => e.type === "transport").map((e) => `${e.arg}@${e.t}`),
      proxy: { ...proxy.stats, paths: undefined },
      websockets: await websockets(page),
    });

    const problems = [
      ...checkSeries(messages, { tag: "U", echoes: sent, stream: STREAM }),
      ...(await checkSequence(page)),
    ];
    assert.deepEqual(problems, []);
    assert.ok(maxEchoMs <= MAX_ECHO_DELAY_MS, `an echo took ${maxEchoMs} ms`);
    // The switch must stick: no fall back to HTTP once the WebSocket took over.
    const after = log.filter((e) => e.type === "transport" && e.t >= switchedAt).map((e) => e.arg);
    assert.deepEqual(
      [...new Set(after)],
      ["websocket"],
      `transport events after the switch: ${after.join(", ")}; ` +
        `websockets: ${(await websockets(page)).join(", ")}`,
    );
    assert.equal(finalTransport, "websocket");
    assert.ok(proxy.stats.upgradesPassed >= 1);
    assert.ok(onLongpoll > 0 && onWebsocket > 0, `before ${onLongpoll}, after ${onWebsocket}`);
    assert.deepEqual(log.filter((e) => e.type === "reset" || e.type === "close"), []);
  });
}
