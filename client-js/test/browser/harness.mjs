// Shared helpers for the browser end-to-end tests (node:test + playwright-core + the system Chromium).
//
// The tests run against `crates/switchboard/examples/e2e_server.rs`, which must be built first:
//
//   cargo build -p switchboard --example e2e_server
//   cd client-js && node --test --test-concurrency=1 test/browser/
//
// Everything here binds 127.0.0.1 only, every wait is bounded, and every child process is killed when
// the test process exits, whatever the outcome. Set E2E_TIMEOUT_SCALE (e.g. 2) to stretch the waits
// (not the product's 3 s first-message bound) on a very slow machine. E2E_CLIENT_JS=path serves that
// file as the page's client.js instead of the copy compiled into the server (to try a client build
// without rebuilding the server; the client.js test still checks the compiled-in copy).

import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
/** The repository root (client-js/test/browser/ → ../../..). */
export const REPO_ROOT = path.resolve(here, "../../..");
const TARGET_DIR = process.env.CARGO_TARGET_DIR
  ? path.resolve(REPO_ROOT, process.env.CARGO_TARGET_DIR)
  : path.join(REPO_ROOT, "target");
/** The test server binary (override with E2E_SERVER_BIN). */
export const SERVER_BIN =
  process.env.E2E_SERVER_BIN || path.join(TARGET_DIR, "debug", "examples", "e2e_server");
/** The browser: always the system Chromium, never a downloaded one. */
export const CHROMIUM = process.env.E2E_CHROMIUM || "/usr/bin/chromium";
/** Multiplier for the generous waits below. */
export const SCALE = Number(process.env.E2E_TIMEOUT_SCALE) || 1;
/** The product's requirement: the first message arrives within 3 s of `connect`. */
export const FIRST_MESSAGE_BOUND_MS = 3000;

/** `ms` scaled by E2E_TIMEOUT_SCALE. */
export const scaled = (ms) => Math.round(ms * SCALE);

// ---------------------------------------------------------------------------------------------
// Child processes: tracked, and killed on exit whatever happens.

const children = new Set();
function killChildren() {
  for (const child of children) {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
}
process.on("exit", killChildren);
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.once(signal, () => {
    killChildren();
    process.exit(128 + (os.constants.signals[signal] ?? 1));
  });
}

/** Resolves after `ms`, or rejects with `message`. */
function timeout(promise, ms, message) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(message)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Spawns the server binary and waits for its `listening on` line. */
function spawnServer(args) {
  return new Promise((resolve, reject) => {
    if (!fs.existsSync(SERVER_BIN)) {
      reject(
        new Error(
          `${SERVER_BIN} is missing: run \`cargo build -p switchboard --example e2e_server\` first`,
        ),
      );
      return;
    }
    // --exit-on-eof: the server exits when our end of its stdin closes, even if we are SIGKILLed.
    const child = spawn(SERVER_BIN, [...args, "--exit-on-eof"], {
      stdio: ["pipe", "pipe", "pipe"],
    });
    children.add(child);
    let stdout = "";
    let stderr = "";
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`e2e_server did not print "listening on" within 20 s; stderr: ${stderr}`));
    }, scaled(20000));
    child.stdout.setEncoding("utf8");
    child.stderr.setEncoding("utf8");
    child.stdout.on("data", (chunk) => {
      stdout += chunk;
      const match = /listening on 127\.0\.0\.1:(\d+)/.exec(stdout);
      if (match) {
        clearTimeout(timer);
        resolve({ child, port: Number(match[1]), stderr: () => stderr });
      }
      if (stdout.length > 100000) stdout = stdout.slice(-1000);
    });
    child.stderr.on("data", (chunk) => {
      stderr = (stderr + chunk).slice(-20000);
    });
    child.stdin.on("error", () => {});
    child.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on("exit", (code, signal) => {
      children.delete(child);
      clearTimeout(timer);
      reject(new Error(`e2e_server exited (${code ?? signal}) before listening; stderr: ${stderr}`));
    });
  });
}

async function stopChild(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGKILL");
  await timeout(exited, 10000, "e2e_server did not exit after SIGKILL").catch(() => {});
  child.stdin.destroy();
}

/**
 * Starts the test server. Options (ms): `hold` (long-poll hold), `ping`, `resume`; `port` (0 =
 * ephemeral); `allowedOrigins` (a list: only the server's own origin and these are allowed,
 * instead of any origin). Returns `{port, url, stop(), restart(), stderr()}`; `restart` kills the process and
 * starts a new one on the same port (its sessions are gone: clients must reset).
 */
export async function startServer({ hold, ping, resume, port = 0, allowedOrigins = [] } = {}) {
  const flags = allowedOrigins.flatMap((origin) => ["--allowed-origin", origin]);
  if (hold !== undefined) flags.push("--hold-ms", String(hold));
  if (ping !== undefined) flags.push("--ping-ms", String(ping));
  if (resume !== undefined) flags.push("--resume-ms", String(resume));
  let current = await spawnServer(["--port", String(port), ...flags]);
  const server = {
    port: current.port,
    url: `http://127.0.0.1:${current.port}`,
    restarts: 0,
    stderr: () => current.stderr(),
    async stop() {
      await stopChild(current.child);
    },
    async restart() {
      await stopChild(current.child);
      // The port is free at once (SO_REUSEADDR), but retry a little in case it is not.
      let lastError;
      for (let attempt = 0; attempt < 40; attempt++) {
        try {
          current = await spawnServer(["--port", String(server.port), ...flags]);
          server.restarts++;
          return;
        } catch (err) {
          lastError = err;
          await sleep(250);
        }
      }
      throw new Error(`could not restart e2e_server on port ${server.port}: ${lastError}`);
    },
  };
  return server;
}

// ---------------------------------------------------------------------------------------------
// A small proxy with network-failure modes.

/** Proxy modes; see `startProxy`. */
export const PROXY_MODES = [
  "pass",
  "refuse-upgrade",
  "hang-upgrade",
  "kill-ws-after-1s",
  "cut-long-requests",
  "cut-slow-504",
  "kill-ws-idle-2s",
  "buffer-responses",
  "buffer-after-first",
];

/** What `cut-slow-504` answers instead of a response that has not started: nginx's error page. */
const GATEWAY_TIMEOUT_PAGE =
  "<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n" +
  "<center><h1>504 Gateway Time-out</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

const HOP_BY_HOP = [
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
];

function withoutHopByHop(headers) {
  const copy = { ...headers };
  for (const name of HOP_BY_HOP) delete copy[name];
  return copy;
}

/**
 * Starts a proxy on 127.0.0.1 (ephemeral port) in front of the server on `targetPort`:
 *
 * - `pass`: everything passes, WebSocket upgrades included;
 * - `refuse-upgrade`: WebSocket upgrades get `403 Forbidden`; other requests pass;
 * - `hang-upgrade`: WebSocket upgrade requests are never answered; other requests pass;
 * - `kill-ws-after-1s`: upgrades pass, and each upgraded connection is destroyed 1 s after the
 *   server's answer;
 * - `cut-long-requests`: a request whose response has not completed after 3 s gets its connection
 *   destroyed; upgrades are refused as with `refuse-upgrade`;
 * - `cut-slow-504`: like a reverse proxy with a 5 s read timeout: a plain HTTP request whose
 *   response has not started after 5 s is answered `504 Gateway Timeout` with an HTML body (nginx's
 *   error page, not JSON) and its upstream request is destroyed; the client connection stays open
 *   (keep-alive). Upgrades are refused as with `refuse-upgrade`. With the server's default 20 s
 *   hold, every idle long poll is cut this way;
 * - `kill-ws-idle-2s`: like a load balancer's idle timeout: upgrades pass, and an upgraded
 *   connection that has carried no bytes in either direction for 2 s is destroyed.
 * - `buffer-responses`: like a buffering proxy: every plain HTTP response is held, headers and
 *   body, until the upstream's response has ended, then sent whole (a streamed response only when
 *   the server ends it). Upgrades are refused as with `refuse-upgrade`.
 * - `buffer-after-first`: like a proxy that collects small writes: a plain HTTP response's headers
 *   and first chunk pass at once, the rest is held until the upstream's response has ended (an
 *   event stream's open event arrives, nothing after it). Upgrades are refused.
 *
 * The mode is read when a request or upgrade arrives: `setMode` changes what happens to the next
 * ones, not to connections already upgraded (use `killWebSockets` for those).
 *
 * Returns `{port, url, stats, mode, setMode(mode), killWebSockets(), close()}`; `killWebSockets()`
 * destroys every upgraded connection open now (like a network drop) and returns how many. `stats`
 * counts `requests` (plain HTTP), `upgrades` (attempted), `upgradesPassed` (answered by the server),
 * `upgradesRefused`, `upgradesHung`, `wsKilled` (upgraded connections destroyed by the proxy, in any
 * mode or by `killWebSockets`), `cut` (`cut-long-requests`), `gatewayTimeouts` (`cut-slow-504`),
 * and `paths` ("METHOD /path" → count).
 */
export async function startProxy(targetPort, mode = "pass") {
  if (!PROXY_MODES.includes(mode)) throw new Error(`unknown proxy mode ${mode}`);
  const stats = {
    requests: 0,
    upgrades: 0,
    upgradesPassed: 0,
    upgradesRefused: 0,
    upgradesHung: 0,
    wsKilled: 0,
    cut: 0,
    gatewayTimeouts: 0,
    paths: {},
  };
  /** The teardown of every upgraded connection open now. */
  const tunnels = new Set();
  const sockets = new Set();
  const track = (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
  };
  const timers = new Set();
  const later = (ms, fn) => {
    const timer = setTimeout(() => {
      timers.delete(timer);
      fn();
    }, ms);
    timers.add(timer);
    return timer;
  };
  const cancel = (timer) => {
    clearTimeout(timer);
    timers.delete(timer);
  };
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

  const server = http.createServer((req, res) => {
    stats.requests++;
    const key = `${req.method} ${req.url.split("?")[0]}`;
    stats.paths[key] = (stats.paths[key] ?? 0) + 1;
    const upstream = http.request({
      host: "127.0.0.1",
      port: targetPort,
      method: req.method,
      path: req.url,
      headers: withoutHopByHop(req.headers),
      agent,
    });
    let finished = false;
    // Set once this proxy answered on its own (504): the upstream's fate no longer matters.
    let answered = false;
    let cut;
    if (proxy.mode === "cut-long-requests") {
      cut = later(3000, () => {
        if (finished) return;
        stats.cut++;
        upstream.destroy();
        req.socket.destroy();
      });
    } else if (proxy.mode === "cut-slow-504") {
      cut = later(5000, () => {
        if (finished || res.headersSent) return;
        stats.gatewayTimeouts++;
        answered = true;
        upstream.destroy();
        res.writeHead(504, {
          "content-type": "text/html",
          "content-length": Buffer.byteLength(GATEWAY_TIMEOUT_PAGE),
        });
        res.end(GATEWAY_TIMEOUT_PAGE);
      });
    }
    upstream.on("response", (answer) => {
      if (answered) return answer.resume();
      if (proxy.mode === "buffer-responses") {
        const chunks = [];
        answer.on("data", (chunk) => chunks.push(chunk));
        answer.on("end", () => {
          res.writeHead(answer.statusCode, withoutHopByHop(answer.headers));
          res.end(Buffer.concat(chunks));
        });
        answer.on("error", () => res.destroy());
        return;
      }
      if (proxy.mode === "buffer-after-first") {
        res.writeHead(answer.statusCode, withoutHopByHop(answer.headers));
        let first = true;
        const rest = [];
        answer.on("data", (chunk) => {
          if (first) res.write(chunk);
          else rest.push(chunk);
          first = false;
        });
        answer.on("end", () => res.end(Buffer.concat(rest)));
        answer.on("error", () => res.destroy());
        return;
      }
      res.writeHead(answer.statusCode, withoutHopByHop(answer.headers));
      answer.pipe(res);
      answer.on("error", () => res.destroy());
    });
    upstream.on("error", () => {
      if (answered) return;
      if (!res.headersSent) {
        res.writeHead(502, { "content-type": "text/plain" });
        res.end("bad gateway");
      } else {
        res.destroy();
      }
    });
    res.on("finish", () => {
      finished = true;
      cancel(cut);
    });
    res.on("close", () => {
      cancel(cut);
      if (!finished) upstream.destroy();
    });
    req.pipe(upstream);
  });
  server.keepAliveTimeout = 30000;
  server.on("connection", track);
  server.on("clientError", (_err, socket) => socket.destroy());

  server.on("upgrade", (req, socket, head) => {
    stats.upgrades++;
    const mode = proxy.mode;
    if (["refuse-upgrade", "cut-long-requests", "cut-slow-504", "buffer-responses", "buffer-after-first"].includes(mode)) {
      stats.upgradesRefused++;
      socket.end(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n" +
          "Connection: close\r\n\r\nForbidden",
      );
      return;
    }
    if (mode === "hang-upgrade") {
      // Keep the connection open and never answer; `close()` destroys it.
      stats.upgradesHung++;
      return;
    }
    // pass / kill-ws-after-1s / kill-ws-idle-2s: a raw TCP tunnel to the server.
    const upstream = net.connect(targetPort, "127.0.0.1");
    track(upstream);
    const teardown = () => {
      tunnels.delete(kill);
      socket.destroy();
      upstream.destroy();
    };
    const kill = () => {
      if (socket.destroyed && upstream.destroyed) return false;
      stats.wsKilled++;
      teardown();
      return true;
    };
    tunnels.add(kill);
    socket.on("close", teardown);
    upstream.on("close", teardown);
    upstream.on("connect", () => {
      let request = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) {
        request += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      }
      upstream.write(`${request}\r\n`);
      if (head.length) upstream.write(head);
      socket.pipe(upstream);
      upstream.pipe(socket);
    });
    upstream.once("data", () => {
      stats.upgradesPassed++;
      if (mode === "kill-ws-after-1s") {
        const timer = later(1000, kill);
        socket.on("close", () => cancel(timer));
      } else if (mode === "kill-ws-idle-2s") {
        // Every byte, either way, restarts the 2 s idle clock (the server's answer included).
        const timer = later(2000, kill);
        const activity = () => {
          if (!socket.destroyed) timer.refresh();
        };
        socket.on("data", activity);
        upstream.on("data", activity);
        socket.on("close", () => cancel(timer));
      }
    });
  });

  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const port = server.address().port;
  const proxy = {
    port,
    url: `http://127.0.0.1:${port}`,
    mode,
    stats,
    setMode(next) {
      if (!PROXY_MODES.includes(next)) throw new Error(`unknown proxy mode ${next}`);
      proxy.mode = next;
    },
    killWebSockets() {
      let killed = 0;
      for (const kill of [...tunnels]) if (kill()) killed++;
      return killed;
    },
    async close() {
      for (const timer of timers) clearTimeout(timer);
      timers.clear();
      const closed = new Promise((resolve) => server.close(resolve));
      for (const socket of sockets) socket.destroy();
      agent.destroy();
      await timeout(closed, 5000, "proxy did not close").catch(() => {});
    },
  };
  return proxy;
}

// ---------------------------------------------------------------------------------------------
// The browser.

const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  // Timers of a headless page must not be throttled.
  "--disable-background-timer-throttling",
  "--disable-renderer-backgrounding",
  "--disable-backgrounding-occluded-windows",
];

/**
 * Launches the system Chromium with a fresh profile in a temporary directory (removed by
 * `close()`). Playwright refuses `--user-data-dir` in `launch`, so this is a persistent context on
 * that directory. Returns `{context, close()}`.
 */
export async function launchBrowser() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "switchboard-e2e-"));
  const removeProfile = () => fs.rmSync(profile, { recursive: true, force: true });
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: scaled(60000),
    });
  } catch (err) {
    removeProfile();
    throw err;
  }
  process.on("exit", removeProfile);
  return {
    context,
    async close() {
      await timeout(context.close(), 20000, "browser did not close").catch(() => {});
      removeProfile();
      process.off("exit", removeProfile);
    },
  };
}

/**
 * Opens `url` (the server's or proxy's test page) in a new tab and waits for the client script.
 * The page's console output and errors are kept in `page.logs` for failure reports.
 */
export async function openPage(browser, url) {
  const page = await browser.context.newPage();
  page.setDefaultTimeout(scaled(30000));
  page.logs = [];
  const log = (line) => {
    page.logs.push(line);
    if (page.logs.length > 300) page.logs.shift();
  };
  page.on("console", (message) => log(`console.${message.type()}: ${message.text()}`));
  page.on("pageerror", (err) => log(`pageerror: ${err.message}`));
  // HTTP errors and failed requests, with the sid (a bearer secret) redacted.
  const redact = (url) => url.replace(/sid=[0-9a-f]+/g, "sid=…");
  page.on("response", (response) => {
    if (response.status() >= 400) {
      const request = response.request();
      log(`http ${response.status()} ${request.method()} ${redact(response.url())}`);
    }
  });
  page.on("requestfailed", (request) => {
    log(`failed ${request.method()} ${redact(request.url())}: ${request.failure()?.errorText}`);
  });
  if (process.env.E2E_CLIENT_JS) {
    // Development aid: serve this file as client.js instead of the copy built into the server.
    const script = fs.readFileSync(process.env.E2E_CLIENT_JS, "utf8");
    await page.route("**/rt/client.js", (route) =>
      route.fulfill({ status: 200, contentType: "text/javascript; charset=utf-8", body: script }),
    );
  }
  await page.goto(url, { waitUntil: "load", timeout: scaled(30000) });
  await page.waitForFunction(
    () => typeof window.Switchboard === "object" && typeof window.Switchboard.connect === "function",
    undefined,
    { timeout: scaled(10000) },
  );
  return page;
}

// ---------------------------------------------------------------------------------------------
// Payloads: generated the same way in Node and in the page, so that both sides can check them.

/**
 * Message `i` of the series `tag` (ASCII tag without ':' or '/'). Rotates through text (Korean and
 * emoji), a named JSON event, binary, and plain JSON.
 */
export function payload(tag, i) {
  switch (i % 4) {
    case 0:
      return { data: `${tag}:${i} 안녕하세요, 세계! 👋🏽🎉 한국어 텍스트` };
    case 1:
      return {
        event: "chat",
        data: { tag, i, text: "채팅 메시지 💬", list: [1, 2.5, null, true, { 키: "값 ✅" }] },
      };
    case 2: {
      const head = Array.from(`${tag}:${i}`, (c) => c.charCodeAt(0));
      return { data: new Uint8Array([...head, 0, 255, 128, 7, 1, i & 255]) };
    }
    default:
      return { data: { tag, i, emoji: "😀🚀✨ 👨‍👩‍👧 🇰🇷" } };
  }
}

/**
 * Classifies a received (normalised) message: an echo of `payload(tag, i)`, an item `"tag/s i"` of
 * a server stream, or null.
 */
export function classify(value) {
  if (value && typeof value === "object" && Array.isArray(value.bin)) {
    const zero = value.bin.indexOf(0);
    const head = String.fromCharCode(...value.bin.slice(0, zero < 0 ? 0 : zero));
    const match = /^(.+):(\d+)$/.exec(head);
    return match ? { kind: "echo", tag: match[1], i: Number(match[2]) } : null;
  }
  if (typeof value === "string") {
    let match = /^([^:/]+)\/s (\d+)$/.exec(value);
    if (match) return { kind: "stream", tag: match[1], i: Number(match[2]) };
    match = /^([^:/]+):(\d+) /.exec(value);
    if (match) return { kind: "echo", tag: match[1], i: Number(match[2]) };
    if (/^low \d+$/.test(value)) return { kind: "stream", tag: "low", i: Number(value.slice(4)) };
    return null;
  }
  if (value && typeof value === "object" && typeof value.tag === "string") {
    return { kind: "echo", tag: value.tag, i: value.i };
  }
  return null;
}

/** A received payload as the page records it: binary becomes `{bin: [bytes]}`. */
export function normalise(data) {
  if (data instanceof Uint8Array) return { bin: Array.from(data) };
  if (data instanceof ArrayBuffer) return { bin: Array.from(new Uint8Array(data)) };
  if (ArrayBuffer.isView(data)) {
    return { bin: Array.from(new Uint8Array(data.buffer, data.byteOffset, data.byteLength)) };
  }
  return data;
}

// ---------------------------------------------------------------------------------------------
// The page-side recorder.

/**
 * Connects in the page: `window.conn = Switchboard.connect(url, options)`, and records:
 *
 * - `window.events`: every connection event (`open`, `close`, `transport`, `state`, `reset`) as
 *   `{type, t, arg, transport}` with `t` = `performance.now()`;
 * - `window.received`: every message, once per (session, seq), in order of arrival, as
 *   `{session, seq, event, value, via, t, transport, wsOpen}` (`value` normalised: binary →
 *   `{bin}`);
 *   `via` lists the listeners it reached (`message` and/or the named-event listener);
 * - `window.duplicates`: messages a listener got twice (same session and seq);
 * - `window.counts[tag]`: `{echo, stream}` received so far per series;
 * - `window.tConnect`: `performance.now()` just before `connect`;
 * - `window.sockets`: every WebSocket the page created; each received message's `wsOpen` is how
 *   many of them were open (readyState OPEN) when it arrived, so 0 means polling carried it;
 * - `window.samples`: every 20 ms, `{t, transport, state, live, open, evented}` (`t` relative to
 *   `connect`; `live`: sockets connecting or open; `evented`: the last `transport` event's
 *   argument), recorded only when something in it changed.
 *
 * `session` starts at 0 and increases on each `reset`. With `first` (a tag), `payload(first, 0)`
 * is sent right after `connect`, so `firstMessageMs(page)` is the round trip from `connect`.
 * Page helpers: `window.sendPayload(tag, i)`, `window.sendSeries(tag, count, everyMs)` (all at once
 * when `everyMs` is 0), `window.startSending(tag, everyMs)` (one payload per `everyMs` until
 * `window.stopSending()`); counts in `window.sent[tag]`, send times in `window.sentAt[tag][i]`.
 */
export async function installRecorder(page, { url = "/rt", options = {}, first, named = ["chat"] } = {}) {
  await page.evaluate(
    ({ url, options, first, named, sources }) => {
      try {
        localStorage.clear();
        sessionStorage.clear();
      } catch {
        // storage unavailable: nothing to clear
      }
      const indirectEval = eval;
      const payload = indirectEval(`(${sources.payload})`);
      const classify = indirectEval(`(${sources.classify})`);
      const normalise = indirectEval(`(${sources.normalise})`);
      const now = () => performance.now();
      const clone = (arg) => {
        try {
          return arg === undefined ? null : JSON.parse(JSON.stringify(arg));
        } catch {
          return String(arg);
        }
      };
      window.events = [];
      window.received = [];
      window.duplicates = [];
      window.counts = {};
      window.sent = {};
      window.session = 0;
      const seen = new Map();
      window.payload = payload;

      // Wire log: every WebSocket's open and close (code, reason), for diagnostics; every socket
      // in `window.sockets`, to tell from their readyState whether one is connecting or open.
      window.wire = [];
      window.sockets = [];
      const NativeWebSocket = window.WebSocket;
      if (!NativeWebSocket.wrapped) {
        window.WebSocket = class extends NativeWebSocket {
          static wrapped = true;
          constructor(...args) {
            super(...args);
            window.sockets.push(this);
            const id = (window.wsCount = (window.wsCount ?? 0) + 1);
            const note = (what) => window.wire.push({ ws: id, what, t: now() - window.tConnect });
            note("new");
            this.addEventListener("open", () => note("open"));
            this.addEventListener("error", () => note("error"));
            this.addEventListener("close", (e) => note(`close ${e.code} ${e.reason}`));
          }
        };
      }

      const openSockets = () => window.sockets.filter((ws) => ws.readyState === 1).length;
      const liveSockets = () => window.sockets.filter((ws) => ws.readyState <= 1).length;

      window.tConnect = now();
      const conn = window.Switchboard.connect(url, options);
      window.conn = conn;

      // Sampler: every 20 ms, what the application would see, recorded when it changes.
      window.samples = [];
      window.lastTransportEvent = null;
      let lastSample = "";
      clearInterval(window.sampler);
      window.sampler = setInterval(() => {
        const sample = {
          transport: conn.transport,
          state: conn.state,
          live: liveSockets(),
          open: openSockets(),
          evented: window.lastTransportEvent,
        };
        const key = JSON.stringify(sample);
        if (key !== lastSample) {
          lastSample = key;
          window.samples.push({ t: now() - window.tConnect, ...sample });
          if (window.samples.length > 5000) window.samples.shift();
        }
      }, 20);

      const record = (via) => (data, info) => {
        const seq = info && typeof info.seq === "number" ? info.seq : null;
        const key = `${window.session}:${seq}`;
        const known = seq === null ? undefined : seen.get(key);
        if (known) {
          if (known.via.includes(via)) {
            window.duplicates.push({ session: window.session, seq, via, t: now() });
          } else {
            known.via.push(via);
          }
          return;
        }
        const value = normalise(data);
        const entry = {
          session: window.session,
          seq,
          event: info && info.event !== undefined ? info.event : null,
          value,
          via: [via],
          t: now(),
          transport: conn.transport,
          // WebSockets open (readyState OPEN) when it arrived: with none, polling carried it.
          wsOpen: openSockets(),
        };
        if (seq !== null) seen.set(key, entry);
        window.received.push(entry);
        const kind = classify(value);
        if (kind) {
          const count = (window.counts[kind.tag] ??= { echo: 0, stream: 0 });
          count[kind.kind]++;
        }
      };
      for (const type of ["open", "close", "transport", "state", "reset"]) {
        conn.on(type, (arg) => {
          if (type === "reset") window.session++;
          if (type === "transport") window.lastTransportEvent = arg;
          // The sid is a bearer secret: record only whether it looks right.
          const recorded =
            type === "open" && arg && typeof arg === "object"
              ? { resumed: arg.resumed, sidOk: /^[0-9a-f]{32}$/.test(String(arg.sid)) }
              : clone(arg);
          window.events.push({ type, t: now(), arg: recorded, transport: conn.transport });
        });
      }
      conn.on("message", record("message"));
      for (const name of named) conn.on(name, record(name));

      window.sentAt = {};
      window.sendPayload = (tag, i) => {
        const p = payload(tag, i);
        (window.sentAt[tag] ??= [])[i] = now();
        if (p.event) conn.emit(p.event, p.data);
        else conn.send(p.data);
        window.sent[tag] = (window.sent[tag] ?? 0) + 1;
      };
      const trySend = (tag, i) => {
        try {
          window.sendPayload(tag, i);
        } catch (err) {
          window.events.push({ type: "send-error", t: now(), arg: String(err && err.message) });
        }
      };
      let sender = null;
      window.startSending = (tag, everyMs) => {
        let i = 0;
        sender = setInterval(() => trySend(tag, i++), everyMs);
      };
      window.stopSending = () => clearInterval(sender);
      window.sendSeries = (tag, count, everyMs) => {
        if (!everyMs) {
          for (let i = 0; i < count; i++) trySend(tag, i);
          return;
        }
        let i = 0;
        const timer = setInterval(() => {
          if (i < count) trySend(tag, i++);
          if (i >= count) clearInterval(timer);
        }, everyMs);
      };
      // The longest time an echo of series `tag` took to come back, in ms.
      window.maxEchoDelay = (tag) => {
        let worst = 0;
        for (const entry of window.received) {
          const kind = classify(entry.value);
          if (kind && kind.kind === "echo" && kind.tag === tag) {
            const sentAt = window.sentAt[tag]?.[kind.i];
            if (sentAt !== undefined) worst = Math.max(worst, entry.t - sentAt);
          }
        }
        return worst;
      };
      if (first !== undefined) window.sendPayload(first, 0);
    },
    {
      url,
      options,
      first,
      named,
      sources: {
        payload: payload.toString(),
        classify: classify.toString(),
        normalise: normalise.toString(),
      },
    },
  );
}

/**
 * Waits until `predicate` (a JavaScript expression, run in the page) is truthy. Gives up early when
 * the connection has closed for good (`state === "closed"`) and the predicate still fails.
 */
export async function waitFor(page, predicate, timeoutMs, what = predicate) {
  const holds = `(() => { try { return !!(${predicate}); } catch { return false; } })()`;
  const closed = `(window.conn && window.conn.state === "closed")`;
  let failure;
  try {
    // Which of the two was seen, in the same evaluation: a predicate that held only for a moment
    // (a state in passing) still counts.
    const seen = await page.waitForFunction(`${holds} ? "holds" : ${closed} ? "closed" : false`, undefined, {
      timeout: timeoutMs,
      polling: 50,
    });
    if ((await seen.jsonValue()) === "holds") return;
    failure = `the connection closed while waiting for ${what}`;
  } catch (err) {
    failure = `timed out after ${timeoutMs} ms waiting for ${what} (${err.message.split("\n")[0]})`;
  }
  const state = await describe(page).catch((e) => `(page state unavailable: ${e.message})`);
  throw new Error(`${failure}\n${state}`);
}

/** A summary of the page's connection for failure messages. */
export async function describe(page) {
  const state = await page.evaluate(() => {
    const received = window.received ?? [];
    return {
      transport: window.conn?.transport,
      state: window.conn?.state,
      counts: window.counts,
      sent: window.sent,
      received: received.length,
      lastReceived: received.slice(-3).map((r) => ({ ...r, value: JSON.stringify(r.value).slice(0, 80) })),
      duplicates: (window.duplicates ?? []).slice(0, 5),
      websockets: (window.wire ?? []).map((w) => `#${w.ws} ${w.what} @${Math.round(w.t)}`),
      events: (window.events ?? []).map((e) => ({
        type: e.type,
        t: Math.round(e.t - window.tConnect),
        arg: e.arg,
      })),
    };
  });
  const logs = (page.logs ?? []).slice(-30).join("\n");
  return `page state: ${JSON.stringify(state, null, 1)}\npage logs:\n${logs}`;
}

/** Milliseconds from `connect` to the first received message. */
export async function firstMessageMs(page) {
  return page.evaluate(() =>
    window.received.length ? window.received[0].t - window.tConnect : null,
  );
}

/** The recorded connection events (`t` relative to `connect`). */
export async function events(page) {
  return page.evaluate(() =>
    window.events.map((e) => ({ ...e, t: Math.round(e.t - window.tConnect) })),
  );
}

/** The WebSocket log: `#id new|open|error|close CODE REASON @t` (`t` relative to `connect`). */
export async function websockets(page) {
  return page.evaluate(() => window.wire.map((w) => `#${w.ws} ${w.what} @${Math.round(w.t)}`));
}

/** The recorded messages (`t` relative to `connect`). */
export async function received(page) {
  return page.evaluate(() =>
    window.received.map((r) => ({ ...r, t: r.t - window.tConnect })),
  );
}

/**
 * Starts an exchange without waiting for it: asks the server for the stream of `stream` texts
 * `"tag/s i"` (spread over `streamMs` if given) and sends `echoes` payloads of series `tag` (spread
 * over `spreadMs` if given).
 */
export async function startExchange(page, { tag, echoes, stream, streamMs, spreadMs }) {
  await page.evaluate(
    ({ tag, echoes, stream, streamMs, everyMs }) => {
      const command = { cmd: "stream", count: stream, prefix: `${tag}/s` };
      if (streamMs !== undefined) command.ms = streamMs;
      window.conn.send(command);
      window.sendSeries(tag, echoes, everyMs);
    },
    { tag, echoes, stream, streamMs, everyMs: spreadMs ? Math.max(1, spreadMs / echoes) : 0 },
  );
}

/**
 * Runs one exchange: asks the server for a stream of `stream` texts `"tag/s i"` (spread over
 * `streamMs` if given) and sends `echoes` payloads of series `tag`, then waits for everything to
 * come back. Check the result with `checkSeries`.
 */
export async function exchange(
  page,
  { tag, echoes, stream, streamMs, spreadMs, timeoutMs = scaled(60000) },
) {
  await startExchange(page, { tag, echoes, stream, streamMs, spreadMs });
  await waitFor(
    page,
    `(window.counts[${JSON.stringify(tag)}]?.echo ?? 0) >= ${echoes} && ` +
      `(window.counts[${JSON.stringify(tag)}]?.stream ?? 0) >= ${stream}`,
    timeoutMs,
    `${echoes} echoes and ${stream} streamed messages of series ${tag}`,
  );
}

function firstDifference(actual, expected) {
  const length = Math.max(actual.length, expected.length);
  for (let i = 0; i < length; i++) {
    if (JSON.stringify(actual[i]) !== JSON.stringify(expected[i])) {
      return (
        `first difference at position ${i}: got ${JSON.stringify(actual[i])?.slice(0, 200)}, ` +
        `expected ${JSON.stringify(expected[i])?.slice(0, 200)} ` +
        `(got ${actual.length} items, expected ${expected.length})`
      );
    }
  }
  return null;
}

/**
 * Checks the received messages of series `tag`: the echoes of `payload(tag, 0..echoes-1)` (payload
 * and event name unchanged) and the stream `"tag/s 0".."tag/s stream-1"`, each exactly once and in
 * order. Returns a list of problems (empty when all is well).
 */
export function checkSeries(messages, { tag, echoes, stream }) {
  const problems = [];
  const mine = messages
    .map((message) => ({ message, kind: classify(message.value) }))
    .filter(({ kind }) => kind && kind.tag === tag);
  const echoed = mine.filter(({ kind }) => kind.kind === "echo").map(({ message }) => ({
    event: message.event ?? null,
    value: message.value,
  }));
  const expectedEchoes = Array.from({ length: echoes }, (_, i) => {
    const p = payload(tag, i);
    return { event: p.event ?? null, value: normalise(p.data) };
  });
  const echoDiff = firstDifference(echoed, expectedEchoes);
  if (echoDiff) problems.push(`echoes of ${tag}: ${echoDiff}`);
  const streamed = mine.filter(({ kind }) => kind.kind === "stream").map(({ message }) => message.value);
  const expectedStream = Array.from({ length: stream }, (_, i) => `${tag}/s ${i}`);
  const streamDiff = firstDifference(streamed, expectedStream);
  if (streamDiff) problems.push(`stream of ${tag}: ${streamDiff}`);
  const named = mine.filter(({ message }) => message.event === "chat");
  const notNamed = named.filter(({ message }) => !message.via.includes("chat"));
  if (notNamed.length) {
    problems.push(`${notNamed.length} "chat" events were not delivered to on("chat")`);
  }
  return problems;
}

/**
 * Checks that each session's messages have sequence numbers 1, 2, 3, … in order of arrival, and
 * that no listener got a message twice. Returns a list of problems.
 */
export async function checkSequence(page) {
  const { messages, duplicates } = await page.evaluate(() => ({
    messages: window.received.map((r) => ({ session: r.session, seq: r.seq })),
    duplicates: window.duplicates,
  }));
  const problems = [];
  if (duplicates.length) {
    problems.push(`${duplicates.length} duplicate deliveries, first: ${JSON.stringify(duplicates[0])}`);
  }
  const next = new Map();
  for (const [index, { session, seq }] of messages.entries()) {
    const expected = next.get(session) ?? 1;
    if (seq !== expected) {
      problems.push(`message ${index}: session ${session} seq ${seq}, expected ${expected}`);
      if (problems.length > 5) break;
    }
    next.set(session, (seq ?? expected) + 1);
  }
  return problems;
}

/**
 * The longest round trip of an echo of series `tag` (ms). A transport that stalls (messages
 * queued until some timeout) shows here even when everything arrives in the end.
 */
export async function maxEchoDelayMs(page, tag) {
  return Math.round(await page.evaluate((tag) => window.maxEchoDelay(tag), tag));
}

/** The bound `maxEchoDelayMs` is held to: nothing may wait for a long-poll hold or a timeout. */
export const MAX_ECHO_DELAY_MS = scaled(10000);

/** Prints one JSON line for the report (visible in node:test's output). */
export function report(line) {
  console.log(JSON.stringify(line));
}

/**
 * Collects cleanups for one test and runs them (last first) after it, pass or fail. Usage:
 * `const defer = cleanup(t); const server = await startServer(); defer(() => server.stop());`
 */
export function cleanup(t) {
  const tasks = [];
  t.after(async () => {
    for (const task of tasks.reverse()) {
      await timeout(Promise.resolve().then(task), 30000, "cleanup timed out").catch((err) =>
        console.error(`cleanup failed: ${err.message}`),
      );
    }
  });
  return (task) => tasks.push(task);
}

/**
 * The common scenario: browser, page at `pageUrl` (the server or a proxy), connect with `options`
 * and a first message, which must come back within 3 s. Returns `{browser, page, firstMs}`.
 */
export async function connectPage(t, defer, pageUrl, options = {}) {
  const browser = await launchBrowser();
  defer(() => browser.close());
  const page = await openPage(browser, `${pageUrl}/`);
  await installRecorder(page, { options, first: "hello" });
  await waitFor(page, "window.counts.hello?.echo >= 1", scaled(30000), "the first echo");
  const firstMs = await firstMessageMs(page);
  return { browser, page, firstMs };
}
