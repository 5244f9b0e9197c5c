// (a) Each transport forced in turn, directly against the server: connect, first echo within 3 s,
// then 300 client→server echoes and a 500-message server stream, complete and in order.

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
  startServer,
  waitFor,
} from "./harness.mjs";

for (const name of ["websocket", "sse", "longpoll", "poll"]) {
  test(`forced transport: ${name}`, { timeout: scaled(180000) }, async (t) => {
    const defer = cleanup(t);
    const server = await startServer();
    defer(() => server.stop());
    const { page, firstMs } = await connectPage(t, defer, server.url, { transports: [name] });
    await exchange(page, { tag: "A", echoes: 300, stream: 500 });
    const maxEchoMs = await maxEchoDelayMs(page, "A");
    report({
      scenario: `forced-${name}`,
      transport: await page.evaluate(() => window.conn.transport),
      firstMessageMs: Math.round(firstMs),
      maxEchoDelayMs: maxEchoMs,
    });
    assert.ok(
      firstMs <= FIRST_MESSAGE_BOUND_MS,
      `first message after ${Math.round(firstMs)} ms (bound ${FIRST_MESSAGE_BOUND_MS} ms)`,
    );
    assert.ok(maxEchoMs <= MAX_ECHO_DELAY_MS, `an echo took ${maxEchoMs} ms`);
    const problems = [
      ...checkSeries(await received(page), { tag: "A", echoes: 300, stream: 500 }),
      ...(await checkSequence(page)),
    ];
    assert.deepEqual(problems, []);

    // Low priority both ways: batched, never reordered.
    await page.evaluate(() => {
      window.conn.send({ cmd: "lowstream", count: 100 });
      for (let i = 0; i < 50; i++) {
        const p = window.payload("L", i);
        if (p.event) window.conn.emit(p.event, p.data, { lowPriority: true });
        else window.conn.send(p.data, { lowPriority: true });
      }
    });
    await waitFor(
      page,
      "window.counts.low?.stream >= 100 && window.counts.L?.echo >= 50",
      scaled(30000),
      "low-priority messages",
    );
    const lows = (await received(page)).filter(
      (m) => typeof m.value === "string" && m.value.startsWith("low "),
    );
    assert.deepEqual(lows.map((m) => m.value), Array.from({ length: 100 }, (_, i) => `low ${i}`));
    assert.deepEqual(checkSeries(await received(page), { tag: "L", echoes: 50, stream: 0 }), []);
    assert.deepEqual(await checkSequence(page), []);

    const log = await events(page);
    const transports = log.filter((e) => e.type === "transport").map((e) => e.arg);
    assert.ok(transports.length >= 1, `no transport event: ${JSON.stringify(log)}`);
    assert.deepEqual([...new Set(transports)], [name], `transport events: ${transports}`);
    const opens = log.filter((e) => e.type === "open");
    assert.equal(opens.length, 1, `open events: ${JSON.stringify(opens)}`);
    assert.deepEqual(opens[0].arg, { resumed: false, sidOk: true });
    assert.deepEqual(log.filter((e) => e.type === "reset" || e.type === "close"), []);
    const { transport, state } = await page.evaluate(() => ({
      transport: window.conn.transport,
      state: window.conn.state,
    }));
    assert.equal(transport, name);
    assert.equal(state, "open");
  });
}
