// (d) Server restart mid-session: the new server process does not know the session, so the client
// must report `reset`, open a new session and keep working.

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
  websockets,
} from "./harness.mjs";

test("server restart: reset, new session, still working", { timeout: scaled(180000) }, async (t) => {
  const defer = cleanup(t);
  const server = await startServer();
  defer(() => server.stop());
  const { page, firstMs } = await connectPage(t, defer, server.url, {});
  assert.ok(
    firstMs <= FIRST_MESSAGE_BOUND_MS,
    `first message after ${Math.round(firstMs)} ms (bound ${FIRST_MESSAGE_BOUND_MS} ms)`,
  );
  await exchange(page, { tag: "R", echoes: 100, stream: 100 });
  const transportBefore = await page.evaluate(() => window.conn.transport);

  const restartAt = await page.evaluate(() => performance.now() - window.tConnect);
  await server.restart();
  await waitFor(page, `window.events.some((e) => e.type === "reset")`, scaled(60000), "a reset event");
  await waitFor(
    page,
    `window.conn.state === "open" && window.events.some((e, i) => e.type === "open" && ` +
      `window.events.findIndex((r) => r.type === "reset") < i)`,
    scaled(60000),
    "a new session opened after the reset",
  );
  // Sent after the reset: must be echoed by the new server process.
  await exchange(page, { tag: "S", echoes: 50, stream: 50 });

  const maxEchoMs = await maxEchoDelayMs(page, "S");
  const log = await events(page);
  const reset = log.find((e) => e.type === "reset");
  const reopened = log.find((e) => e.type === "open" && e.t >= reset.t);
  report({
    scenario: "server-restart",
    transport: await page.evaluate(() => window.conn.transport),
    transportBefore,
    firstMessageMs: Math.round(firstMs),
    resetAfterRestartMs: Math.round(reset.t - restartAt),
    reopenedAfterRestartMs: Math.round(reopened.t - restartAt),
    reset: reset.arg,
    maxEchoDelayAfterResetMs: maxEchoMs,
    websockets: await websockets(page),
    events: log.filter((e) => e.type !== "state").map((e) => `${e.type}:${JSON.stringify(e.arg)}@${e.t}`),
    console: page.logs.filter((line) => line.startsWith("console.")),
  });

  const messages = await received(page);
  const problems = [
    ...checkSeries(messages, { tag: "R", echoes: 100, stream: 100 }),
    ...checkSeries(messages, { tag: "S", echoes: 50, stream: 50 }),
    ...(await checkSequence(page)),
  ];
  assert.deepEqual(problems, []);
  assert.ok(maxEchoMs <= MAX_ECHO_DELAY_MS, `an echo took ${maxEchoMs} ms after the reset`);
  assert.equal(reset.arg?.reason, "unknown_session", `reset: ${JSON.stringify(reset.arg)}`);
  assert.deepEqual(reopened.arg, { resumed: false, sidOk: true });
  assert.equal(log.filter((e) => e.type === "reset").length, 1);
  assert.deepEqual(log.filter((e) => e.type === "close"), []);
  // Refused connections while the server is down, and the new server's 404 for the old session,
  // show in the console (the browser logs every failed request); a 409 would be a needless one.
  assert.deepEqual(page.logs.filter((line) => /\b409\b/.test(line)), []);
});
