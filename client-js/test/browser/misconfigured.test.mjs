// (f) The first hour's mistakes, in a real browser: a page that connects to a path where nothing
// is mounted, and a page whose origin the server does not allow, must each end with a `close`
// event that says what to check, within a few seconds and after a few requests, instead of
// resetting in a loop or staying `connecting` for ever.

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  cleanup,
  events,
  installRecorder,
  launchBrowser,
  openPage,
  report,
  scaled,
  startProxy,
  startServer,
  waitFor,
  websockets,
} from "./harness.mjs";
import { freePort } from "./nginx.mjs";

/** Waits for the page's connection to close; returns its close info, `ready`'s outcome and when. */
async function closed(page, what) {
  await waitFor(page, `window.events.some((e) => e.type === "close")`, scaled(10000), what);
  const log = await events(page);
  const close = log.find((e) => e.type === "close");
  const ready = await page.evaluate(() =>
    window.conn.ready.then(
      (info) => ({ resolved: info }),
      (info) => ({ rejected: info }),
    ),
  );
  return { close, ready, log };
}

for (const transports of [undefined, ["websocket"]]) {
  const name = transports ? transports.join(",") : "default transports";
  test(`a wrong mount path (${name}): close not_found within seconds, a few requests, no reset`, { timeout: scaled(60000) }, async (t) => {
    const defer = cleanup(t);
    const server = await startServer();
    defer(() => server.stop());
    // The proxy passes everything: it is there to count the requests.
    const proxy = await startProxy(server.port, "pass");
    defer(() => proxy.close());
    const browser = await launchBrowser();
    defer(() => browser.close());
    const page = await openPage(browser, `${proxy.url}/`);
    // The server mounts /rt; the page asks for /realtime, which the app answers with a plain 404.
    await installRecorder(page, { url: "/realtime", options: transports ? { transports } : {} });
    const { close, ready, log } = await closed(page, "the close event");
    const wrong = () =>
      Object.entries(proxy.stats.paths)
        .filter(([path]) => path.includes("/realtime/"))
        .reduce((sum, [, count]) => sum + count, 0);
    const requests = wrong() + proxy.stats.upgrades;
    // Nothing more afterwards.
    await new Promise((wake) => setTimeout(wake, 2000));
    const later = wrong() + proxy.stats.upgrades;
    report({
      scenario: `wrong-mount-path ${name}`,
      closeAfterMs: close.t,
      close: close.arg,
      requests,
      paths: proxy.stats.paths,
      upgrades: proxy.stats.upgrades,
      websockets: await websockets(page),
      events: log.map((e) => `${e.type}:${JSON.stringify(e.arg)}@${e.t}`),
    });
    assert.equal(close.arg.code, 4404);
    assert.equal(close.arg.reason, "not_found");
    assert.match(close.arg.message, /\/realtime: no Switchboard mount point here \(404\): check the path/);
    assert.ok(close.t <= scaled(5000), `closed after ${close.t} ms`);
    // One WebSocket, then one HTTP request (POST /open, or the WebSocket-only check).
    assert.ok(requests <= 3, `${requests} requests to the wrong path`);
    assert.equal(later, requests, "requests after the close");
    assert.deepEqual(log.filter((e) => e.type === "reset"), []);
    assert.equal(await page.evaluate(() => window.conn.state), "closed");
    assert.deepEqual(ready, { rejected: close.arg });
  });
}

test("a page whose origin the server does not allow: close origin_not_allowed instead of hanging; an allowed origin works", { timeout: scaled(90000) }, async (t) => {
  const defer = cleanup(t);
  // The server allows its own origin and http://localhost:PORT. A page served as
  // http://127.0.0.1:PORT that connects to http://localhost:PORT/rt is cross-origin and not listed.
  const port = await freePort();
  const server = await startServer({ port, allowedOrigins: [`http://localhost:${port}`] });
  defer(() => server.stop());
  const browser = await launchBrowser();
  defer(() => browser.close());

  // The listed origin, cross-origin (CORS with credentials, and the WebSocket's Origin): it works.
  const allowed = await openPage(browser, `http://localhost:${port}/`);
  await installRecorder(allowed, { url: `http://127.0.0.1:${port}/rt`, first: "hello" });
  await waitFor(allowed, "window.counts.hello?.echo >= 1", scaled(10000), "the first echo from the listed origin");
  assert.equal(await allowed.evaluate(() => window.conn.transport), "websocket");

  for (const transports of [undefined, ["websocket"], ["longpoll"]]) {
    const page = await openPage(browser, `http://127.0.0.1:${port}/`);
    await installRecorder(page, { url: `http://localhost:${port}/rt`, options: transports ? { transports } : {} });
    const { close, ready, log } = await closed(page, "the close event");
    report({
      scenario: `origin-not-allowed ${transports ? transports.join(",") : "default"}`,
      closeAfterMs: close.t,
      close: close.arg,
      websockets: await websockets(page),
      events: log.map((e) => `${e.type}:${JSON.stringify(e.arg)}@${e.t}`),
      logs: page.logs.slice(-10),
    });
    assert.equal(close.arg.code, 4403);
    assert.equal(close.arg.reason, "origin_not_allowed");
    assert.match(close.arg.message, /the server does not allow this page's origin: add it with Builder::allowed_origins/);
    assert.ok(close.t <= scaled(5000), `closed after ${close.t} ms`);
    assert.deepEqual(log.filter((e) => e.type === "reset" || e.type === "open"), []);
    assert.deepEqual(ready, { rejected: close.arg });
    await page.close();
  }
});
