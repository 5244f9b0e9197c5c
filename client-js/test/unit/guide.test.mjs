// Checks the JavaScript and HTML code blocks of docs/guide.md against the real client.
//
// Every ```js / ```javascript block, and every inline <script> of every ```html block, must:
//   - parse (as strict code, after `import { … } from "switchboard-client"` is turned into a
//     destructuring of the real module, whose exports the import must name);
//   - use only API names the client has: `Switchboard.x` from the script-tag build's global,
//     `conn.x(…)` methods of Connection.prototype, `conn.x` properties the client sets, and
//     options declared in types/switchboard.d.ts;
//   - run: `Switchboard.connect` / `connect` create real Connections over the fake WebSocket and
//     fetch of fakes.mjs, the connection is opened, and every listener the block registered is
//     called with sample arguments without throwing. Names the block takes from the page (the DOM,
//     application functions such as `render`) resolve to a permissive stub.
// The guide's statements about the client's events, options, reset reasons and error codes are
// also checked against the source, so that the guide and the client cannot drift apart.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import * as clientModule from "../../src/index.js";
import { Connection } from "../../src/connection.js";
import { FakeWebSocket, fakeFetch, memoryStorage } from "./fakes.mjs";

const read = (path) => readFileSync(new URL(path, import.meta.url), "utf8");
const guide = read("../../../docs/guide.md");
const connectionSource = read("../../src/connection.js");
const globalSource = read("../../src/global.js");
const typesSource = read("../../types/switchboard.d.ts");

// --- What the client really offers ----------------------------------------------------------------

/** Members of the script-tag build's global `Switchboard` (src/global.js). */
const GLOBAL_NAMES = /globalThis\.Switchboard\s*=\s*\{([^}]*)\}/
  .exec(globalSource)[1]
  .split(",")
  .map((name) => name.trim());

/** Options declared in `interface ConnectOptions` of the type declarations. */
const OPTIONS = new Set(
  [.../export interface ConnectOptions \{([\s\S]*?)\n\}/.exec(typesSource)[1].matchAll(/^\s*(\w+)\??:/gm)].map((m) => m[1]),
);

/** Connection events that server event names cannot shadow. */
const RESERVED = JSON.parse(/const RESERVED = (\[[^\]]*\]);/.exec(connectionSource)[1]);

/** Reasons of `reset` events: the session close codes mapped in RESET, plus a lost session. */
const RESET_REASONS = [
  ...Object.values(JSON.parse(
    /const RESET = (\{[^}]*\});/.exec(connectionSource)[1].replace(/(\d+):/g, '"$1":'),
  )),
  ...[...connectionSource.matchAll(/_reset\("(\w+)"\)/g)].map((m) => m[1]),
];

/** Codes of the errors `send` throws. */
const SEND_ERRORS = [...connectionSource.matchAll(/failure\("(\w+)"\)/g)].map((m) => m[1]);

/** Public properties a Connection sets on itself. */
const PROPERTIES = ["transport", "state", "ready"];

// --- The guide's blocks ---------------------------------------------------------------------------

/** Fenced code blocks of a Markdown text: `{ lang, code, line }`. */
function fencedBlocks(markdown) {
  const blocks = [];
  const lines = markdown.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(.*)$/.exec(lines[i]);
    if (!open) continue;
    const start = i;
    const body = [];
    for (i++; i < lines.length && !/^```\s*$/.test(lines[i]); i++) body.push(lines[i]);
    assert.ok(i < lines.length, `code block opened at line ${start + 1} is never closed`);
    blocks.push({ lang: open[1].trim(), code: body.join("\n"), line: start + 1 });
  }
  return blocks;
}

const blocks = fencedBlocks(guide);

/** The JavaScript to check: JS blocks whole, HTML blocks' inline scripts. */
function scriptsOf(block) {
  const lang = block.lang.split(",")[0];
  if (lang === "js" || lang === "javascript") return [{ code: block.code, sources: [] }];
  if (lang !== "html") return [];
  const scripts = [];
  const sources = [];
  for (const [, attributes = "", body] of block.code.matchAll(/<script(\s[^>]*)?>([\s\S]*?)<\/script>/g)) {
    const src = /\bsrc="([^"]*)"/.exec(attributes);
    if (src) {
      assert.equal(body.trim(), "", `line ${block.line}: a <script src> element must be empty`);
      sources.push(src[1]);
    } else {
      scripts.push(body);
    }
  }
  assert.ok(scripts.length > 0, `line ${block.line}: HTML block without an inline script`);
  return scripts.map((code) => ({ code, sources }));
}

const checked = blocks.flatMap((block) => scriptsOf(block).map((script) => ({ ...script, block })));

// --- Running a block ------------------------------------------------------------------------------

/** A value that accepts any use: property access, calls, `new`, assignment, conversion, iteration. */
function anything() {
  const proxy = new Proxy(function stub() {}, {
    get(_, key) {
      if (key === Symbol.toPrimitive) return (hint) => (hint === "number" ? 0 : "stub");
      if (key === Symbol.iterator) return function* () {};
      if (typeof key === "symbol" || key === "then") return undefined;
      return proxy;
    },
    apply: () => proxy,
    construct: () => proxy,
    set: () => true,
    has: () => true,
  });
  return proxy;
}

/** Turns `import { a, b } from "switchboard-client";` into a destructuring of the real module. */
function rewriteImports(code, where) {
  const rewritten = code.replace(
    /^\s*import\s*\{([^}]*)\}\s*from\s*["']([^"']+)["'];?[ \t]*$/gm,
    (_, names, specifier) => {
      assert.equal(specifier, "switchboard-client", `${where}: import from ${specifier}`);
      for (const name of names.split(",").map((n) => n.trim().split(/\s+as\s+/)[0]).filter(Boolean)) {
        assert.ok(name in clientModule, `${where}: the client module exports no ${name}`);
      }
      return `const {${names}} = __module;`;
    },
  );
  assert.ok(!/^\s*import\b/m.test(rewritten), `${where}: an import this test cannot check`);
  return rewritten;
}

const AsyncFunction = (async () => {}).constructor;

/** Sample arguments for a listener of `event`. */
function sampleArguments(event) {
  switch (event) {
    case "open":
      return [{ sid: "0123456789abcdef0123456789abcdef", resumed: false }];
    case "message":
      return ["hello", { seq: 1 }];
    case "transport":
      return ["longpoll"];
    case "state":
      return ["reconnecting"];
    case "reset":
      return [{ reason: "overflow", unsent: 2 }];
    case "close":
      return [{ code: 4401, reason: "unauthorized" }];
    default:
      return [anything(), { event, seq: 1 }];
  }
}

/** Runs `code` with fake globals; returns the connections it made and the errors of listeners. */
async function run(code, where) {
  const made = [];
  const errors = [];
  const connect = (url, options = {}) => {
    for (const key of Object.keys(options)) {
      assert.ok(OPTIONS.has(key), `${where}: connect option ${key} does not exist`);
    }
    const { fetch, calls } = fakeFetch();
    const conn = clientModule.connect(new URL(url, "http://localhost:3000/").href, {
      ...options,
      WebSocket: FakeWebSocket,
      fetch,
      storage: memoryStorage(),
    });
    // Call listeners synchronously, so that an error is this block's failure.
    conn._fire = function (event, ...args) {
      for (const listener of this._listeners.get(event) || []) {
        try {
          listener(...args);
        } catch (error) {
          errors.push(`listener of ${event}: ${error.stack}`);
        }
      }
    };
    made.push({ conn, calls, url });
    return conn;
  };
  const provided = {
    Switchboard: { ...Object.fromEntries(GLOBAL_NAMES.map((name) => [name, clientModule[name]])), connect },
    __module: { ...clientModule, connect },
    console: { log() {}, debug() {}, info() {}, warn() {}, error() {} },
  };
  // Names the block does not declare and the runtime does not have come from the page: stub them.
  const scope = new Proxy(provided, {
    has: (target, key) => typeof key === "string" && (key in target || !(key in globalThis)),
    get: (target, key) => (key in target ? target[key] : key === Symbol.unscopables ? undefined : anything()),
    set: () => true,
  });
  const body = new Function("__scope", `with (__scope) { return (async () => {\n${code}\n})(); }`);
  await body(scope);
  return { made, errors };
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 0));

// --- The tests ------------------------------------------------------------------------------------

test("the guide has code blocks to check, each with a language", () => {
  assert.ok(checked.length >= 8, `only ${checked.length} JavaScript snippets found`);
  for (const block of blocks) {
    // rustdoc runs untagged blocks as Rust.
    assert.ok(block.lang, `line ${block.line}: code block without a language`);
  }
});

for (const { code: original, sources, block } of checked) {
  const where = `docs/guide.md line ${block.line} (${block.lang})`;

  test(`${where}: parses, uses only real API names, and runs`, async () => {
    const code = rewriteImports(original, where);

    // Parses, as strict code (modules are strict).
    try {
      new AsyncFunction(`"use strict";\n${code}`);
    } catch (error) {
      assert.fail(`${where}: ${error.message}`);
    }

    // The script-tag build's global.
    for (const [, name] of code.matchAll(/\bSwitchboard\.(\w+)/g)) {
      assert.ok(GLOBAL_NAMES.includes(name), `${where}: Switchboard.${name} does not exist`);
    }
    // Every connection variable's members.
    const connections = [...code.matchAll(/\b(?:const|let|var)\s+(\w+)\s*=\s*(?:Switchboard\.)?connect\(/g)].map((m) => m[1]);
    assert.ok(connections.length > 0 || !/connect\(/.test(code), `${where}: a connection this test does not see`);
    for (const conn of connections) {
      for (const [, member, call] of code.matchAll(new RegExp(`\\b${conn}\\.(\\w+)(\\s*\\()?`, "g"))) {
        assert.ok(!member.startsWith("_"), `${where}: ${conn}.${member} is internal`);
        if (call) {
          assert.equal(typeof Connection.prototype[member], "function", `${where}: ${conn}.${member}() is not a method`);
        } else {
          assert.ok(
            PROPERTIES.includes(member) || typeof Connection.prototype[member] === "function",
            `${where}: ${conn}.${member} does not exist`,
          );
        }
      }
    }
    // Error codes compared against.
    for (const [, code] of original.matchAll(/\.code\s*===\s*"(\w+)"/g)) {
      assert.ok(SEND_ERRORS.includes(code), `${where}: send never throws code ${code}`);
    }
    // The client is loaded from the mount point that the page connects to.
    for (const src of sources) {
      assert.match(src, /\/client\.js$/, `${where}: the client is served at <mount>/client.js`);
      for (const [, url] of code.matchAll(/connect\("([^"]+)"/g)) {
        assert.equal(src, `${url}/client.js`, `${where}: the page loads ${src} but connects to ${url}`);
      }
    }

    // Runs against the real client.
    const { made, errors } = await run(code, where);
    assert.ok(made.length > 0 || connections.length === 0, `${where}: connect was never called`);
    await tick();
    for (const { conn, calls } of made) {
      const socket = conn._current && conn._current._ws;
      if (socket) {
        // Open the session: what the block queued goes out as well-formed frames.
        socket.accept({ sid: "0123456789abcdef0123456789abcdef" });
        assert.equal(conn.state, "open", `${where}: the connection did not open`);
        for (const frame of socket.sent) {
          assert.ok(["m", "ack", "ping", "pong", "close"].includes(frame.t), `${where}: sent ${JSON.stringify(frame)}`);
        }
      }
      // Every listener the block registered, with sample arguments.
      for (const [event, listeners] of conn._listeners) {
        for (const listener of listeners) {
          try {
            listener(...sampleArguments(event));
          } catch (error) {
            errors.push(`listener of ${event}: ${error.stack}`);
          }
        }
      }
      conn.close();
      for (const call of calls) if (!call.answered && !call.aborted) call.fail();
    }
    await tick();
    assert.deepEqual(errors, [], `${where}: listeners threw`);
  });
}

test("the guide documents every connection event, option, reset reason and send error", () => {
  for (const event of RESERVED) assert.ok(guide.includes(`| \`${event}\` |`), `event ${event} missing from the events table`);
  for (const option of OPTIONS) assert.ok(guide.includes(`\`${option}\``), `option ${option} missing`);
  for (const reason of RESET_REASONS) assert.ok(guide.includes(`\`${reason}\``), `reset reason ${reason} missing`);
  for (const code of SEND_ERRORS) assert.ok(guide.includes(`| \`${code}\` |`), `send error ${code} missing from its table`);
});

// --- The guide's statements about the client's behaviour ------------------------------------------

/** A connection over the fake WebSocket, with every event recorded. */
function recorded(options = {}) {
  const { fetch, calls } = fakeFetch();
  const conn = clientModule.connect("http://localhost:3000/realtime", {
    WebSocket: FakeWebSocket,
    fetch,
    storage: memoryStorage(),
    backoff: { min: 5, max: 20 },
    ...options,
  });
  const events = [];
  for (const name of RESERVED) conn.on(name, (...args) => events.push([name, ...args]));
  const cleanup = () => {
    conn.close();
    for (const call of calls) if (!call.answered && !call.aborted) call.fail();
  };
  return { conn, calls, events, cleanup };
}

const socketOf = (conn) => conn._current && conn._current._ws;
const SID = "0123456789abcdef0123456789abcdef";

test("guide §4: a refusal with 401 or 403 ends in close { code: 4000 + status, reason }, over both transports", async () => {
  // WebSocket: the server upgrades and closes with 4401.
  const ws = recorded();
  await tick();
  socketOf(ws.conn).drop(4401, "unauthorized");
  assert.deepEqual(ws.events.at(-1), ["close", { code: 4401, reason: "unauthorized" }]);
  assert.equal(ws.conn.state, "closed");
  ws.cleanup();

  // Polling: POST /open answers 403 with the JSON error body.
  const poll = recorded({ transports: ["longpoll"] });
  await tick();
  const open = poll.calls.find((call) => call.url.includes("/open"));
  assert.deepEqual(open.body, {});
  open.answer(403, { error: "forbidden", message: "you are banned" });
  await tick();
  assert.deepEqual(poll.events.at(-1), ["close", { code: 4403, reason: "forbidden" }]);
  poll.cleanup();
});

test("guide §4: auth data goes in the WebSocket query and in the body of POST /open", async () => {
  const ws = recorded({ auth: { token: "t0k" } });
  await tick();
  assert.match(socketOf(ws.conn).url, /[?&]auth=%7B%22token%22%3A%22t0k%22%7D/);
  ws.cleanup();
  const poll = recorded({ auth: { token: "t0k" }, transports: ["longpoll"] });
  await tick();
  assert.deepEqual(poll.calls[0].body, { auth: { token: "t0k" } });
  poll.cleanup();
});

test("guide §9: 4000 closes for good, 4003 and 4004 reset, a local close reports code 1000", async () => {
  const closed = recorded();
  await tick();
  socketOf(closed.conn).accept({ sid: SID });
  socketOf(closed.conn).deliver({ t: "close", code: 4000, reason: "closed" });
  assert.deepEqual(closed.events.at(-1), ["close", { code: 4000, reason: "closed" }]);
  closed.cleanup();

  for (const [code, reason] of [[4003, "overflow"], [4004, "shutdown"]]) {
    const reset = recorded();
    await tick();
    socketOf(reset.conn).accept({ sid: SID });
    reset.conn.send("never acknowledged");
    socketOf(reset.conn).deliver({ t: "close", code, reason });
    assert.deepEqual(reset.events.find(([name]) => name === "reset"), ["reset", { reason, unsent: 1 }]);
    assert.notEqual(reset.conn.state, "closed");
    reset.cleanup();
  }

  const local = recorded();
  await tick();
  socketOf(local.conn).accept({ sid: SID });
  local.conn.close();
  assert.deepEqual(local.events.at(-1), ["close", { code: 1000, reason: "closed by client" }]);
});

test("guide §12: open fires for each new session, named events follow message, send errors have codes", async () => {
  const { conn, events, cleanup } = recorded({ maxBuffered: 2 });
  const chat = [];
  conn.on("chat", (data, info) => chat.push([data, info]));
  conn.on("close", () => chat.push("reserved names do not reach named listeners"));
  await tick();
  socketOf(conn).accept({ sid: SID, max_message: 10 });
  assert.deepEqual(events.find(([name]) => name === "open"), ["open", { sid: SID, resumed: false }]);
  socketOf(conn).deliver({ t: "m", s: 1, e: "chat", d: { text: "hi" } }, { t: "m", s: 2, e: "close", d: 1 });
  assert.deepEqual(events.filter(([name]) => name === "message").map(([, data, info]) => [data, info]), [
    [{ text: "hi" }, { seq: 1, event: "chat" }],
    [1, { seq: 2, event: "close" }],
  ]);
  assert.deepEqual(chat, [[{ text: "hi" }, { seq: 1, event: "chat" }]]);

  assert.throws(() => conn.send("x".repeat(20)), { code: "too_large" });
  conn.send(new Uint8Array([1, 2, 3]));
  conn.emit("typing", null, { lowPriority: true });
  assert.throws(() => conn.send("one too many"), { code: "buffer_full" });
  assert.deepEqual(socketOf(conn).sent.find((frame) => frame.t === "m"), { t: "m", s: 1, b: "AQID" });
  cleanup();
  assert.throws(() => conn.send("after the end"), { code: "closed" });
});
