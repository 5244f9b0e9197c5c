// (b) Through a proxy that blocks or breaks something, with default options: the client must end
// up working on the transport the network allows, and the first message must arrive within 3 s.

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  FIRST_MESSAGE_BOUND_MS,
  MAX_ECHO_DELAY_MS,
  maxEchoDelayMs,
  checkSequence,
  checkSeries,
  cleanup,
  connectPage,
  events,
  exchange,
  received,
  report,
  scaled,
  startProxy,
  startServer,
  waitFor,
  websockets,
} from "./harness.mjs";

// Where WebSocket is refused, hung or killed, streamed responses still pass: Server-Sent Events.
// Where long requests are cut (3 s), neither SSE nor long polls last: short polling. Where only
// responses that have not started are cut (a 504 after 5 s), SSE streams pass. Where answers are
// held until they end, streams never arrive: long polling; where all but the first chunk is held, the
// stream's open event arrives but not the probe after it: long polling too.
const EXPECTED = {
  "refuse-upgrade": "sse",
  "hang-upgrade": "sse",
  "kill-ws-after-1s": "sse",
  "cut-long-requests": "poll",
  "cut-slow-504": "sse",
  // A proxy that holds every answer until it ends: the SSE stream brings no open event in time.
  "buffer-responses": "longpoll",
  // A proxy that passes the first chunk and holds the rest: the probe after the open event is late.
  "buffer-after-first": "longpoll",
};

for (const [mode, expected] of Object.entries(EXPECTED)) {
  test(`through a proxy in mode ${mode}: ends on ${expected}`, { timeout: scaled(240000) }, async (t) => {
    const defer = cleanup(t);
    const server = await startServer();
    defer(() => server.stop());
    const proxy = await startProxy(server.port, mode);
    defer(() => proxy.close());
    const { page, firstMs } = await connectPage(t, defer, proxy.url, {});
    const firstTransport = await page.evaluate(() => window.received[0].transport);

    // Both directions at once, spread over the first 4 s (for kill-ws-after-1s: across the kill).
    await exchange(page, { tag: "B", echoes: 300, stream: 500, streamMs: 4000, spreadMs: 4000 });
    const maxEchoB = await maxEchoDelayMs(page, "B");

    // Then the client must settle on the transport the proxy allows, and keep working on it.
    await waitFor(
      page,
      `window.conn.transport === ${JSON.stringify(expected)} && window.conn.state === "open"`,
      scaled(90000),
      `transport ${expected}`,
    );
    await exchange(page, { tag: "C", echoes: 50, stream: 50 });

    const maxEchoC = await maxEchoDelayMs(page, "C");
    const messages = await received(page);
    const log = await events(page);
    const transports = log.filter((e) => e.type === "transport").map((e) => `${e.arg}@${e.t}`);
    const settledMs = log.findLast((e) => e.type === "transport" && e.arg === expected)?.t;
    const finalTransport = await page.evaluate(() => window.conn.transport);
    report({
      scenario: `proxy-${mode}`,
      transport: finalTransport,
      firstMessageMs: Math.round(firstMs),
      firstMessageTransport: firstTransport,
      settledOnExpectedMs: Math.round(settledMs),
      maxEchoDelayMs: { first4s: maxEchoB, settled: maxEchoC },
      transportEvents: transports,
      proxy: { ...proxy.stats, paths: undefined },
      websockets: await websockets(page),
    });

    // Behind a buffering proxy the first message waits for the client to give up on its stream
    // (no open event, or no probe after it, within `connectTimeout`, 2.5 s).
    const bound = FIRST_MESSAGE_BOUND_MS + (mode.startsWith("buffer-") ? 2500 : 0);
    assert.ok(firstMs <= bound, `first message after ${Math.round(firstMs)} ms (bound ${bound} ms)`);
    const problems = [
      ...checkSeries(messages, { tag: "B", echoes: 300, stream: 500 }),
      ...checkSeries(messages, { tag: "C", echoes: 50, stream: 50 }),
      ...(await checkSequence(page)),
    ];
    assert.deepEqual(problems, []);
    assert.ok(maxEchoB <= MAX_ECHO_DELAY_MS, `an echo took ${maxEchoB} ms in the first 4 s`);
    assert.ok(maxEchoC <= MAX_ECHO_DELAY_MS, `an echo took ${maxEchoC} ms on ${expected}`);
    assert.equal(finalTransport, expected, `transport events: ${transports.join(", ")}`);
    // A buffering intermediary is detected within a few seconds (the open deadline, or the probe's).
    if (mode.startsWith("buffer-")) assert.ok(settledMs <= scaled(10000), `on ${expected} only after ${settledMs} ms`);
    assert.deepEqual(log.filter((e) => e.type === "reset" || e.type === "close"), []);
  });
}
