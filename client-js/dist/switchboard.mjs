/* Switchboard client 0.1.0 | MIT OR Apache-2.0 */

// src/backoff.js
function backoff(attempt, { min = 250, max = 1e4, jitter = 0.5 } = {}, random = Math.random) {
  const base = Math.min(max, min * 2 ** Math.min(attempt, 30));
  return Math.round(base * (1 - jitter * random()));
}

// src/emitter.js
var Emitter = class {
  constructor() {
    this._listeners = /* @__PURE__ */ new Map();
  }
  /** Subscribes `listener` to `event`. */
  on(event, listener) {
    const list = this._listeners.get(event) || [];
    this._listeners.set(event, [...list, listener]);
    return this;
  }
  /** Subscribes `listener` to the next `event` only; `off` with the same `listener` removes it. */
  once(event, listener) {
    const once = (...args) => {
      this.off(event, once);
      listener(...args);
    };
    once._listener = listener;
    return this.on(event, once);
  }
  /** Removes `listener` from `event` (subscribed with `on` or `once`). */
  off(event, listener) {
    const list = this._listeners.get(event) || [];
    this._listeners.set(event, list.filter((l) => l !== listener && (!l._listener || l._listener !== listener)));
    return this;
  }
  _fire(event, ...args) {
    for (const listener of this._listeners.get(event) || []) {
      try {
        listener(...args);
      } catch (error) {
        setTimeout(() => {
          throw error;
        });
      }
    }
  }
};

// src/frames.js
var isBinary = (data) => data instanceof ArrayBuffer || ArrayBuffer.isView(data);
var bytesOf = (data) => new Uint8Array(data.buffer || data, data.byteOffset, data.byteLength);
function toBase64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 32768) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 32768));
  }
  return btoa(text);
}
function fromBase64(text) {
  const chars = atob(text);
  const bytes = new Uint8Array(chars.length);
  for (let i = 0; i < chars.length; i++) bytes[i] = chars.charCodeAt(i);
  return bytes;
}
var utf8 = new TextEncoder();
function encodeMessage(seq, data, event, request) {
  let text = `{"t":"m","s":${seq}`;
  if (request) text += `,"q":${request}`;
  if (event !== void 0) text += `,"e":${JSON.stringify(String(event))}`;
  let size;
  if (isBinary(data)) {
    const bytes = bytesOf(data);
    text += `,"b":"${toBase64(bytes)}"}`;
    size = bytes.length;
  } else {
    const json = JSON.stringify(data) ?? "null";
    text += `,"d":${json}}`;
    size = utf8.encode(json).length;
  }
  return { text, size };
}
var payloadOf = (frame) => "b" in frame ? fromBase64(frame.b) : frame.d;

// src/memory.js
var TransportMemory = class {
  /**
   * @param {Pick<Storage, "getItem" | "setItem"> | null} storage
   * @param {string} key storage key (one per mount URL)
   * @param {number} ttl how long an entry is remembered, in ms
   */
  constructor(storage, key, ttl, now = Date.now) {
    this._storage = storage;
    this._key = key;
    this._ttl = ttl;
    this._now = now;
  }
  // Without storage (private mode, Node without one) nothing is remembered.
  _read() {
    try {
      return JSON.parse(this._storage.getItem(this._key)) || {};
    } catch {
      return {};
    }
  }
  _write(entries) {
    try {
      this._storage.setItem(this._key, JSON.stringify(entries));
    } catch {
    }
  }
  /** Whether `name` failed within the remembered period. */
  failed(name) {
    const until = this._read()[name];
    return typeof until === "number" && until > this._now();
  }
  /** Records that `name` failed now. */
  remember(name) {
    this._write({ ...this._read(), [name]: this._now() + this._ttl });
  }
  /** Forgets a failure of `name` (it worked again). */
  forget(name) {
    const entries = this._read();
    if (name in entries) {
      delete entries[name];
      this._write(entries);
    }
  }
  /** A value stored with `store` within the remembered period, or undefined. */
  value(name) {
    const entry = this._read()[name];
    if (entry && entry.until > this._now()) return entry.value;
  }
  /** Keeps `value` under `name` for the remembered period. */
  store(name, value) {
    this._write({ ...this._read(), [name]: { value, until: this._now() + this._ttl } });
  }
};

// src/polling.js
var PollingTransport = class {
  /**
   * Polls for `conn`'s session (which must exist) and reports `_frames(transport, frames)` and, once,
   * `_down(transport, { code, reason, status, body, lifetime })` when a poll fails.
   * @param {"longpoll" | "poll"} name
   */
  constructor(conn, name, delay) {
    this.name = name;
    this._conn = conn;
    this._aborts = /* @__PURE__ */ new Set();
    this.att = conn._probe && conn._pollAtt ? conn._pollAtt : ++conn._att;
    conn._pollAtt = this.att;
    this._idle = delay === null;
    if (delay) this._wake = setTimeout(() => this._loop(), delay);
    else if (!this._idle) queueMicrotask(() => this._loop());
  }
  async _loop() {
    this._idle = false;
    const conn = this._conn;
    const options = conn._options;
    const long = this.name === "longpoll";
    while (!this._stopped) {
      const started = Date.now();
      const ack = conn._rx;
      const answer = await conn._request(
        "GET",
        `poll?v=1&sid=${conn._sid}&ack=${ack}&wait=${long ? 1 : 0}&att=${this.att}`,
        null,
        (long ? conn._hold : 0) + options.requestTimeout,
        this._aborts
      );
      if (this._stopped) return;
      const lifetime = Date.now() - started;
      if (answer.status !== 200 || !Array.isArray(answer.body)) {
        this._stopped = true;
        return conn._down(this, {
          code: answer.status >= 400 && answer.status < 600 ? 4e3 + answer.status : 0,
          reason: conn._error(answer.status, answer.body),
          status: answer.status,
          body: answer.body,
          lifetime
        });
      }
      if (long && lifetime >= conn._hold * 0.9) conn._held();
      if (!long) conn._sample(lifetime);
      conn._acked = Math.max(conn._acked, ack);
      conn._frames(this, answer.body);
      if (!long && !this._stopped) await new Promise((wake) => this._wake = setTimeout(wake, options.pollInterval));
    }
  }
  /** Gives up on this transport (for example after a sequence gap) and reports it. */
  _fail(code, reason) {
    if (this._stopped) return;
    this.stop();
    this._conn._down(this, { code, reason, status: 0, lifetime: Infinity });
  }
  /** Polling writes nothing itself: client frames go up in POSTs. */
  send() {
  }
  /** Stops polling and abandons the request in flight. */
  stop() {
    this._stopped = true;
    clearTimeout(this._wake);
    for (const abort of this._aborts) abort.abort();
  }
};

// src/stream.js
var Stream = class {
  /**
   * Starts a transport `name` for `conn`. It reports to the connection: `_attached(transport,
   * openFrame)`, `_frame(transport, frame)` and, once, when it fails or ends, `_down(transport, {
   * code, reason, opened, lifetime, idle })`. Without the open frame within `connectTimeout` it
   * fails (a hanging upgrade, or an intermediary that buffers the stream); so does an SSE stream
   * whose probe (a `ping` the server sends after the open event, §5.7) does not follow in that time
   * (an intermediary that passes the first chunk and holds back the rest): as not opened.
   */
  constructor(conn, name) {
    this.name = name;
    this._conn = conn;
    this._att = ++conn._att;
    this._timer = setTimeout(() => this._fail(0), conn._options.connectTimeout);
  }
  /** One message of the stream: a frame, or (WebSocket with `batch=1`) an array of frames. */
  _receive(text) {
    let frames;
    try {
      frames = [].concat(JSON.parse(text));
    } catch {
      return this._fail(1007);
    }
    this._heard = this._active = Date.now();
    for (const frame of frames) {
      if (this._stopped) return;
      if (this._openedAt) {
        if (frame && frame.t === "ping") this._pinged = true;
        this._conn._frame(this, frame);
      } else if (frame && frame.t === "open") this._open(frame);
      else if (frame && frame.t === "close") this._fail(frame.code || 1002, frame.reason);
    }
  }
  _open(frame) {
    this._openedAt = this._heard;
    clearTimeout(this._timer);
    const sse = this.name === "sse";
    const limit = sse ? 45e3 : frame.ping + 1e4;
    const keepalive = this._conn._keepalive;
    if (sse) this._deadline = setTimeout(() => this._pinged || this._fail(0, "held", true), this._conn._options.connectTimeout);
    this._timer = setInterval(
      () => {
        const now = Date.now();
        if (now - this._heard > limit) this._fail(0);
        else if (now - this._active >= keepalive && this.send(['{"t":"ping"}'])) this._conn._timing ||= [Infinity, now];
      },
      Math.min(limit / 4, 5e3, keepalive / 4 || Infinity)
    );
    this._conn._attached(this, frame);
  }
  /** Writes frames if the transport can (only a WebSocket can); returns whether it did. */
  send() {
  }
  _fail(code, reason, held) {
    if (this.stop()) {
      const now = Date.now();
      this._conn._down(this, {
        code,
        reason,
        opened: !held && !!this._openedAt,
        lifetime: this._openedAt ? now - this._openedAt : 0,
        idle: this._openedAt ? now - this._active : 0
      });
    }
  }
  /** Stops the transport quietly (switch, close or failure); returns whether it was still running. */
  stop() {
    if (this._stopped) return false;
    this._stopped = true;
    clearInterval(this._timer);
    clearTimeout(this._deadline);
    this._close();
    return true;
  }
};

// src/sse.js
var ENDS = { superseded: 4409, moved: 1012, recycle: 1012 };
var SseTransport = class extends Stream {
  /** Streams `conn`'s session, which exists (or is being attached in this same turn). */
  constructor(conn) {
    super(conn, "sse");
    this._abort = new AbortController();
    queueMicrotask(() => this._read());
  }
  async _read() {
    const conn = this._conn;
    try {
      const response = await conn._options.fetch(
        `${conn._base}/sse?v=1&sid=${conn._sid}&ack=${this._ack = conn._rx}&att=${this._att}`,
        { credentials: "include", signal: this._abort.signal }
      );
      if (response.status !== 200) {
        const error = conn._error(response.status, await response.json().catch(() => null));
        return this._fail(error ? 4e3 + response.status : 0, error);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let rest = "";
      let data = "";
      let event = "";
      for (; ; ) {
        const { done, value } = await reader.read();
        if (done || this._stopped) break;
        this._heard = Date.now();
        const lines = (rest + decoder.decode(value, { stream: true })).split(/\r?\n/);
        rest = lines.pop();
        for (const line of lines) {
          if (this._stopped) return;
          if (line) {
            const [, field, text] = /^([^:]*):? ?(.*)/.exec(line);
            if (field === "data") data += text + "\n";
            if (field === "event") event = text;
          } else if (event) {
            return this._fail(ENDS[event] || 0, event);
          } else if (data) {
            this._receive(data);
            data = "";
          }
        }
      }
    } catch {
    }
    this._fail(0);
  }
  _close() {
    this._abort.abort();
  }
};

// src/websocket.js
var WebSocketTransport = class extends Stream {
  /** Opens a socket for `conn`'s session, or for a new session when it has none. */
  constructor(conn) {
    super(conn, "websocket");
    const options = conn._options;
    let url = conn._base.replace(/^http/, "ws") + `/ws?v=1&batch=1&att=${this._att}`;
    if (conn._sid) url += `&sid=${conn._sid}&ack=${this._ack = conn._rx}`;
    else if (options.auth !== void 0) url += "&auth=" + encodeURIComponent(JSON.stringify(options.auth));
    const ws = this._ws = new options.WebSocket(url);
    ws.onmessage = (event) => this._receive(event.data);
    ws.onclose = (event) => this._fail(event.code, event.reason);
  }
  /** Writes frames, if the socket is open; returns whether it was. */
  send(frames) {
    if (this._openedAt && this._ws.readyState === 1) {
      for (const frame of frames) this._ws.send(frame);
      return this._active = Date.now();
    }
  }
  _close() {
    this._ws.onmessage = this._ws.onclose = null;
    try {
      this._ws.close(1e3);
    } catch {
    }
  }
};

// src/connection.js
var DEFAULTS = {
  transports: ["websocket", "sse", "longpoll", "poll"],
  connectTimeout: 2500,
  raceAfter: 500,
  earlyCloseWindow: 3e3,
  pollInterval: 1e3,
  requestTimeout: 1e4,
  probeDelay: 3e3,
  probeMax: 6e4,
  rememberFor: 3e5,
  maxBuffered: 1e3,
  lowPriorityDelay: 50
};
var KEEPALIVE_MIN = 1e3;
var IDLE_DEATH = 750;
var CUT_WINDOW = 6e4;
var HISTORY = 32;
var RESERVED = ["open", "message", "close", "transport", "state", "reset"];
var RESET = { 4002: "expired", 4003: "overflow", 4004: "shutdown", 4005: "protocol_error" };
var FATAL = [4400, 4401, 4403];
var ADVICE = {
  __proto__: null,
  not_found: "no Switchboard mount point here (404): check the path given to connect",
  origin_not_allowed: "the server does not allow this page's origin: add it with Builder::allowed_origins"
};
var LOST = 6;
var CLOSE = '{"t":"close"}';
function localStorageIfAny() {
  try {
    return globalThis.localStorage;
  } catch {
  }
}
var failure = (code) => Object.assign(new Error("switchboard: " + code), { code });
var NAMES = ["websocket", "sse", "longpoll", "poll"];
var MS = "a number of ms, at least 0";
var number = (v) => typeof v === "number" && v >= 0 && v < Infinity;
var RULES = {
  __proto__: null,
  transports: [(v) => Array.isArray(v) && v.length && v.every((name, i) => NAMES.includes(name) && v.indexOf(name) === i), "a non-empty list of distinct names of " + NAMES],
  auth: [() => 1],
  backoff: [(v) => v && typeof v === "object" && Object.entries(v).every(([k, n]) => ["min", "max", "jitter"].includes(k) && (n === void 0 || number(n) && (k !== "jitter" || n <= 1))), "{ min, max, jitter }, each optional (ms; jitter 0 to 1)"],
  maxBuffered: [(v) => Number.isInteger(v) && v > 0, "a whole number, at least 1"],
  WebSocket: [(v) => typeof v === "function", "a constructor"],
  fetch: [(v) => typeof v === "function", "a function"],
  storage: [(v) => v === null || typeof v === "object" && typeof v.getItem === "function" && typeof v.setItem === "function", "null or like localStorage"]
};
for (const name of ["connectTimeout", "raceAfter", "earlyCloseWindow", "pollInterval", "requestTimeout", "probeDelay", "probeMax", "rememberFor", "lowPriorityDelay"]) {
  RULES[name] = [number, MS];
}
function checked(options) {
  const given = {};
  for (const [name, value] of Object.entries(options)) {
    if (value === void 0) continue;
    const rule = RULES[name];
    if (!rule) throw new TypeError(`switchboard: unknown option ${name} (known: ${Object.keys(RULES)})`);
    if (!rule[0](value)) throw new TypeError(`switchboard: option ${name} must be ${rule[1]}, not ${describe(value)}`);
    given[name] = value;
  }
  return given;
}
function describe(value) {
  try {
    return typeof value === "function" ? "a function" : JSON.stringify(value).slice(0, 60);
  } catch {
    return String(value);
  }
}
var Connection = class extends Emitter {
  constructor(url, options = {}) {
    super();
    const g = globalThis;
    const given = checked(options || {});
    this._options = {
      ...DEFAULTS,
      WebSocket: g.WebSocket,
      fetch: g.fetch && g.fetch.bind(g),
      storage: localStorageIfAny(),
      ...given
    };
    this._base = new URL(url, g.location && g.location.href).href.replace(/\/+$/, "");
    this._memory = new TransportMemory(this._options.storage, "switchboard:" + this._base, this._options.rememberFor);
    this._keepalive = this._memory.value("keepalive");
    this._fresh();
    this._maxMessage = 65536;
    this._att = this._attempt = this._probeAttempt = this._pollAttempt = this._postFailures = 0;
    this._cuts = this._cutRun = this._cutAt = this._takeovers = 0;
    this._timers = {};
    this._n = { attached: 0, fallbacks: 0, upgrades: 0, resends: 0, resets: 0, sent: 0, received: 0 };
    this._history = [];
    this.transport = null;
    this.state = "connecting";
    this.ready = new Promise((resolve, reject) => this.once("open", resolve).once("close", reject));
    this.ready.catch(() => {
    });
    setTimeout(() => this._connect(this._pick()));
  }
  /** Forgets the session: a new one starts from sequence numbers 0. */
  _fresh() {
    this._sid = this._timing = null;
    this._rx = this._acked = this._seq = this._serverAck = this._sent = this._posted = this._top = 0;
    this._out = [];
    this._q = 0;
    this._pending = /* @__PURE__ */ new Map();
  }
  /**
   * A snapshot for the application's analytics, new on every call (plain data: keep it, change it
   * or `JSON.stringify` it): the transport now, the history of the transports that carried the
   * session, counters, and the round-trip estimate (`Stats` in types/switchboard.d.ts).
   */
  stats() {
    const rtt = this._rtt;
    return {
      transport: this.transport,
      state: this.state,
      transports: this._history.map((entry) => ({ ...entry })),
      ...this._n,
      rtt: rtt == null ? null : Math.round(rtt)
    };
  }
  /** Sends text (a string), JSON (any other value) or binary (`Uint8Array`/`ArrayBuffer`). */
  send(data, options) {
    this._queue(data, void 0, options);
  }
  /** Sends a named event. */
  emit(event, data, options) {
    this._queue(data, event, options);
  }
  /**
   * Sends a request: a message (named `event`, or unnamed when it is `null`) that the server's
   * application answers with `Session::reply`. Resolves with the reply's payload; rejects with an
   * `Error` whose `code` is `timeout` (no reply within `timeout` ms, default 10000; `Infinity` waits
   * as long as the session lasts), `reset` or `closed` (the session that would have answered is
   * gone), or what `send` would throw. A reply that comes later is dropped. Replies are no `message`
   * events.
   */
  request(event, data, { timeout = 1e4, lowPriority } = {}) {
    return new Promise((resolve, reject) => {
      if (typeof timeout !== "number" || !(timeout >= 0)) {
        throw new TypeError(`switchboard: request's timeout must be ${MS} or Infinity, not ${describe(timeout)}`);
      }
      const id = this._q + 1;
      this._queue(data, event ?? void 0, { lowPriority }, id);
      this._q = id;
      const timer = timeout < 2 ** 31 && setTimeout(() => this._answer(id, failure("timeout")), timeout);
      this._pending.set(id, { resolve, reject, timer });
    });
  }
  /** Settles request `id`, if it still waits: with the reply's payload, or rejected with `error`. */
  _answer(id, error, data) {
    const waiting = this._pending.get(id);
    if (!waiting) return;
    this._pending.delete(id);
    clearTimeout(waiting.timer);
    if (error) waiting.reject(error);
    else waiting.resolve(data);
  }
  /** Rejects every request still waiting: the session that would answer them is gone. */
  _giveUp(error) {
    for (const id of [...this._pending.keys()]) this._answer(id, error());
  }
  _queue(data, event, { lowPriority = false } = {}, request) {
    if (this.state === "closed") throw failure("closed");
    if (this._out.length >= this._options.maxBuffered) throw failure("buffer_full");
    const { text, size } = encodeMessage(this._seq + 1, data, event, request);
    if (size > this._maxMessage) throw failure("too_large");
    this._out.push({ seq: ++this._seq, text });
    this._n.sent++;
    if (!lowPriority) {
      this._clear("flush");
      this._flush();
    } else if (!this._timers.flush) {
      this._timers.flush = setTimeout(() => {
        this._timers.flush = null;
        this._flush();
      }, this._options.lowPriorityDelay);
    }
  }
  /** Ends the session. */
  close() {
    if (this.state === "closed") return;
    const current = this._current;
    this._clear("flush");
    if (current && current.name === "websocket") this._flush();
    if (this._sid && !(current && current.name === "websocket" && current.send([CLOSE]))) {
      this._goodbye(this._sid, this._out.map((message) => message.text));
    }
    this._end(1e3, "closed by client");
  }
  // --- Choosing and attaching transports ---------------------------------------------------------
  /**
   * The transport to fall back to from `after`, or without it the best one to start with: the first
   * of those that has not failed recently here (or simply the first).
   */
  _pick(after) {
    const list = this._options.transports;
    const rest = list.slice(list.indexOf(after) + 1);
    return rest.find((name) => !this._memory.failed(name)) || rest[0];
  }
  _connect(name) {
    if (this.state === "closed") return;
    this._clear("retry");
    this._clear("race");
    this._setTransport(name);
    if (name === "websocket") {
      const ws = this._current = new WebSocketTransport(this);
      if (!this._sid && this._pick(name)) {
        this._timers.race = setTimeout(() => {
          this._timers.race = null;
          if (this._current === ws && !this._sid && !this._racer) this._racer = this._open(this._pick(name));
        }, this._options.raceAfter);
      }
    } else if (name === "sse" && this._sid) {
      this._current = new SseTransport(this);
    } else if (this._sid) {
      this._current = new PollingTransport(this, name, this._attempt ? null : 0);
      this._posted = this._serverAck;
      this._sync = true;
      this._post();
    } else if (this._racer && this._racer.name === name) {
      this._current = this._racer;
      this._racer = null;
    } else {
      this._current = this._open(name);
    }
  }
  /**
   * `POST /open` for a new session over HTTP transport `name` (SSE or polling); the request stands
   * for the transport. Over SSE the session is open (sends can go) once this answers, and its
   * stream starts at once, with the session's id.
   */
  _open(name) {
    const opening = { name, stop: () => opening.stopped = true };
    const body = JSON.stringify(this._options.auth === void 0 ? {} : { auth: this._options.auth });
    this._request("POST", "open?v=1", body, this._options.requestTimeout).then(({ status, body: body2 }) => {
      const ok = status === 200 && body2 && body2.t === "open";
      if (this._racer === opening) {
        this._racer = null;
        if (!ok || this._sid || this._current && this._current.name !== "websocket") opening.stopped = true;
        else {
          this._clear("retry");
          this._move("fallback");
          this._loser = this._current;
          this._current = opening;
        }
      }
      if (opening.stopped || this._current !== opening) {
        if (ok) this._goodbye(body2.sid);
      } else if (ok) {
        this._attached(this._current = name === "sse" ? new SseTransport(this) : new PollingTransport(this, name), body2);
      } else {
        this._down(opening, {
          code: status >= 400 ? 4e3 + status : 0,
          reason: this._error(status, body2),
          status,
          lifetime: 0
        });
      }
    });
    return opening;
  }
  /**
   * Ends session `sid` over HTTP, after `messages` (frame texts the server may not have yet) if they
   * fit in one body. Retried while another POST of ours is still being processed (`429`).
   */
  async _goodbye(sid, messages = []) {
    const size = messages.reduce((sum, text) => sum + text.length * 4, 0);
    const body = "[" + [...size < (this._maxBody || 65536) / 2 ? messages : [], CLOSE].join(",") + "]";
    for (let tries = 0; tries < 10; tries++) {
      const { status } = await this._request("POST", `poll?v=1&sid=${sid}`, body, this._options.requestTimeout);
      if (status !== 429) return;
      await new Promise((wake) => setTimeout(wake, 100));
    }
  }
  /**
   * A transport delivered an open frame (a stream's, or the answer to `POST /open`). An SSE stream
   * started after `POST /open` reports its own open frame too: taken again, it changes nothing.
   */
  _attached(transport, open) {
    if (transport === this._probe) {
      this._probe = null;
      this._move("upgrade");
      const old = this._current;
      this._current = transport;
      if (old) old.stop();
    } else if (transport !== this._current) {
      if (open.sid !== this._sid) transport.send([CLOSE]);
      transport.stop();
      if (transport === this._loser) {
        this._loser = null;
        this._probeAttempt = 0;
        this._scheduleProbe(0);
      }
      return;
    }
    this._superseded = null;
    this._takeovers = 0;
    this._clear("retry");
    this._clear("race");
    if (this._racer) this._racer.stop();
    this._racer = null;
    const fresh = this._sid !== open.sid;
    this._sid = open.sid;
    this._hold = open.hold;
    this._ping = open.ping;
    this._maxMessage = open.max_message;
    this._maxBody = open.max_body;
    this._onAck(open.ack);
    this._acked = transport._ack ?? this._rx;
    this._sent = this._posted = this._serverAck;
    if (this._learned && transport.name === "websocket") {
      this._learned = false;
      this._memory.store("keepalive", this._keepalive);
    }
    this._use(transport, fresh);
    if (fresh) this._fire("open", { sid: open.sid, resumed: false });
    this._scheduleAck();
    this._flush();
  }
  /** `transport` works: make it the one in use (`fresh`: the first of a new session). */
  _use(transport, fresh) {
    const name = transport.name;
    this._attempt = 0;
    for (const failed of this._suspects || []) this._memory.remember(failed);
    this._suspects = [];
    if (transport instanceof Stream) this._memory.forget(name);
    this._carry(transport, fresh);
    this._setTransport(name);
    this._setState("open");
    this._scheduleProbe();
    this._scheduleLongpoll();
  }
  /** A transport failed or closed. Decide: reset, end, fall back, or retry with backoff. */
  _down(transport, { code, reason, opened, lifetime, status, idle, body }) {
    const options = this._options;
    if (transport === this._loser) {
      this._loser = null;
      if (this.state === "open" && !opened && !(code >= 4400)) this._memory.remember("websocket");
      return this._scheduleProbe();
    }
    if (transport === this._probe) {
      this._probe = null;
      this._probeAttempt++;
      const back = this._superseded;
      this._superseded = null;
      if (back) this._connect(back);
      else if (this._current && this._current.att) this._pollAtt = this._current.att = ++this._att;
      this._scheduleProbe();
      return this._scheduleLongpoll();
    }
    if (transport !== this._current || this.state === "closed") return;
    this._current = this._timing = null;
    if (reason === "recycle") return this._connect(transport.name);
    if (code === 4409 && this._probe) {
      this._superseded = transport.name;
      return;
    }
    if (code === 4100 || code === 4409) {
      if (++this._takeovers >= 3) return this._reset("superseded");
    }
    if (code === 4404) {
      if (reason !== "not_found") return this._reset("unknown_session");
      if (!this._n.attached || this._attempt >= LOST) return this._end(code, reason);
      this._suspects = [];
    }
    if (RESET[code]) return this._reset(RESET[code]);
    if (code === 4e3 || code === 4001 || FATAL.includes(code)) return this._end(code, reason);
    const name = transport.name;
    let next = name;
    if (transport instanceof Stream && code !== 4100 && code !== 1012 && code < 4400) {
      if (opened && this._learn(code, idle)) {
      } else if (!opened || lifetime < options.earlyCloseWindow) {
        if (!opened && this._learned) this._learned = this._keepalive = void 0;
        next = this._pick(name) || name;
        if (opened) this._probeAttempt++;
      } else {
        this._probeAttempt = 0;
      }
    } else if (name === "longpoll" && this._cut(status, body, lifetime)) {
      const now = Date.now();
      if (now - this._cutAt > CUT_WINDOW) this._cuts = 0;
      this._cutAt = now;
      const fallback = ++this._cuts >= 2 && this._pick(name);
      if (fallback) {
        this._memory.remember(name);
        this._move("fallback");
        return this._repoll(fallback);
      }
      return this._repoll(name, this._cutRun++ ? backoff(this._cutRun - 2, options.backoff) : 0);
    } else if (!(transport instanceof Stream)) {
      this._suspects = [];
    }
    if (next !== name) {
      (this._suspects ||= []).push(name);
      this._move("fallback");
    } else {
      this._why ||= "reconnect";
      if (code === 1006 && !opened && !this._n.attached && !this._asked) {
        this._asked = 1;
        this._request("GET", "poll?v=1", null, options.requestTimeout).then(({ status: status2, body: body2 }) => {
          const reason2 = this._error(status2, body2);
          this._asked = body2 && body2.error || reason2 === "not_found" ? status2 : 0;
          if (this.state === "closed" || this._n.attached) return;
          if (reason2 === "origin_not_allowed" || reason2 === "not_found") this._end(4e3 + status2, reason2);
        });
      }
    }
    this._setTransport(next);
    this._setState(this._sid ? "reconnecting" : "connecting");
    if (next !== name) return this._connect(next);
    this._timers.retry = setTimeout(() => this._connect(name), backoff(this._attempt++, options.backoff));
  }
  /**
   * Whether a long poll that ended like this was cut by an intermediary: no answer at all or a
   * gateway error without the server's JSON body, after holding a while but before the hold time.
   */
  _cut(status, body, lifetime) {
    const gateway = status >= 502 && status <= 504 && !(body && body.error);
    return (!status || gateway) && lifetime > Math.min(1e3, this._hold / 4) && lifetime < this._hold * 0.9;
  }
  /** Goes on polling the session as `name` ("longpoll" or "poll"), without reconnecting. */
  _repoll(name, delay) {
    this._carry(this._current = new PollingTransport(this, name, delay));
    this._setTransport(name);
    this._scheduleLongpoll();
  }
  /**
   * On short polling, try long polls again now and then: the intermediary that cut them may be gone.
   * One more cut sends them back; a long poll held for its full time makes them stay.
   */
  _scheduleLongpoll() {
    const options = this._options;
    if (this._timers.longpoll || this.transport !== "poll" || !options.transports.includes("longpoll")) return;
    const delay = backoff(this._pollAttempt++, { min: options.probeDelay * 10, max: options.probeMax * 5, jitter: 0.3 });
    this._timers.longpoll = setTimeout(() => {
      this._timers.longpoll = null;
      const current = this._current;
      if (this._probe) return this._scheduleLongpoll();
      if (current && current.name === "poll" && this.state === "open") {
        current.stop();
        this._cuts = 1;
        this._cutAt = Date.now();
        this._move("upgrade");
        this._repoll("longpoll");
      }
    }, delay);
  }
  /** A long poll was held for its full time: long polls get through here. */
  _held() {
    this._cuts = 0;
    this._memory.forget("longpoll");
  }
  /**
   * A socket was cut (`code` 1006: no close frame) after `idle` ms without traffic, as
   * idle-timeout killers do. If keep-alives more often than the server's pings would have kept it,
   * send them from now on; returns whether it learned. Only the first such death teaches (once
   * keep-alives run, no socket is that quiet again), and the lesson is kept for later page loads
   * once the next socket opens (see `_attached`; if it cannot, the network went away instead).
   */
  _learn(code, idle) {
    const every = Math.max(KEEPALIVE_MIN, Math.floor(idle / 2));
    if (this._keepalive || code !== 1006 || !(idle >= IDLE_DEATH) || every >= (this._ping || Infinity)) return false;
    this._keepalive = every;
    return this._learned = true;
  }
  /** Counts a `fallback`, an `upgrade` or a `reset`; the next transport's entry tells it (`_carry`). */
  _move(why) {
    this._n[why + "s"]++;
    this._why = why;
  }
  /**
   * `transport` carries the session now. A new transport object gets an entry in the history,
   * with why it came: the first of a session `open` (or `reset`), otherwise the move since the
   * last entry. None when nothing moved (an SSE stream recycled, a long poll cut and polled again,
   * polling back after a failed probe): the session went on as it was.
   */
  _carry(transport, fresh) {
    if (transport === this._used) return;
    this._used = transport;
    const why = fresh ? this._n.resets ? "reset" : "open" : this._why;
    this._why = null;
    if (why) {
      this._n.attached++;
      if (this._history.push({ transport: transport.name, at: Date.now(), why }) > HISTORY) this._history.shift();
    }
  }
  /** A round trip took `ms`: the estimate moves an eighth of the way to it (as TCP's SRTT). */
  _sample(ms) {
    this._rtt = (this._rtt ?? ms) * 0.875 + ms / 8;
  }
  /** The server answered up to `ack` (a pong: `Infinity`): the end of a round trip being timed. */
  _answered(ack) {
    const timing = this._timing;
    if (timing && ack >= timing[0]) {
      this._timing = null;
      this._sample(Date.now() - timing[1]);
    }
  }
  /** Counts the messages of `batch` (in order, about to go) that went before. */
  _count(batch) {
    for (const { seq } of batch) seq > this._top ? this._top = seq : this._n.resends++;
  }
  /** While on a fallback, try WebSocket again now and then; it takes over when it works. */
  _scheduleProbe(delay) {
    const options = this._options;
    if (this._timers.probe || this._probe || this._loser || this.transport === "websocket") return;
    if (!options.transports.includes("websocket") || !options.WebSocket || this.state !== "open") return;
    delay ??= backoff(this._probeAttempt, { min: options.probeDelay, max: options.probeMax, jitter: 0.3 });
    this._timers.probe = setTimeout(() => {
      this._timers.probe = null;
      if (this.state === "open" && this.transport !== "websocket") this._probe = new WebSocketTransport(this);
    }, delay);
  }
  // --- Frames ------------------------------------------------------------------------------------
  /** Frames from a poll answer (transport set) or a POST answer (transport `null`). */
  _frames(transport, frames) {
    if (transport && transport !== this._current) return;
    if (transport) this._cutRun = this._takeovers = 0;
    if (transport && this.state !== "open") this._use(transport);
    for (const frame of frames) this._frame(null, frame);
  }
  _frame(transport, frame) {
    if (transport && transport !== this._current || !frame) return;
    if (frame.t === "m") {
      if (frame.s <= this._rx) return;
      if (frame.s !== this._rx + 1) return this._current && this._current._fail(0);
      this._rx = frame.s;
      this._n.received++;
      const data = payloadOf(frame);
      if (frame.p !== void 0) this._answer(frame.p, null, data);
      else this._message(frame, data);
      this._scheduleAck();
    } else if (frame.t === "ack") {
      this._onAck(frame.a);
    } else if (frame.t === "ping") {
      if (this._current) this._current.send(['{"t":"pong"}']);
    } else if (frame.t === "pong") {
      this._answered(Infinity);
    } else if (frame.t === "close") {
      if (this._current) this._current.stop();
      this._current = null;
      if (RESET[frame.code]) this._reset(RESET[frame.code]);
      else this._end(frame.code, frame.reason);
    }
  }
  /** Hands a message to the application: the `message` event, and its named event. */
  _message(frame, data) {
    const info = { seq: frame.s };
    if (frame.e !== void 0) info.event = frame.e;
    this._fire("message", data, info);
    if (frame.e !== void 0 && !RESERVED.includes(frame.e)) this._fire(frame.e, data, info);
  }
  /** The server has our messages up to `ack`: stop keeping them. */
  _onAck(ack) {
    this._answered(ack);
    if (ack > this._serverAck) this._serverAck = ack;
    while (this._out.length && this._out[0].seq <= this._serverAck) this._out.shift();
  }
  /**
   * On a stream, acknowledge after 32 (WebSocket) or 64 (SSE, in a POST) messages, or else within
   * 100 ms; polls carry the ack themselves.
   */
  _scheduleAck() {
    const sse = this.transport === "sse";
    if (!sse && this.transport !== "websocket") return;
    const ack = () => {
      this._clear("ack");
      const current = this._current;
      if (this._rx <= this._acked || !current) return;
      if (current.name === "sse") {
        this._ackDue = true;
        this._post();
      } else if (current.send([`{"t":"ack","a":${this._rx}}`])) {
        this._acked = this._rx;
      }
    };
    if (this._rx - this._acked >= (sse ? 64 : 32)) ack();
    else this._timers.ack ||= setTimeout(ack, 100);
  }
  // --- Sending -----------------------------------------------------------------------------------
  /** Writes what the server has not acknowledged yet and the current transport has not sent. */
  _flush() {
    const current = this._current;
    if (!current || this.state !== "open") return;
    if (current.name !== "websocket") return this._post();
    const pending = this._out.filter((message) => message.seq > this._sent);
    if (pending.length) {
      const last = pending[pending.length - 1].seq;
      if (current.send(pending.map((message) => message.text))) {
        this._count(pending);
        this._timing ||= [last, Date.now()];
      }
      this._sent = last;
    }
  }
  /** POSTs pending messages, one request at a time, in batches. */
  async _post() {
    if (this._posting) return;
    this._posting = true;
    const sid = this._sid;
    const polling = () => this._sid === sid && this._current && this._current.name !== "websocket";
    try {
      while (polling()) {
        const pending = this._out.filter((message) => message.seq > this._posted);
        if (!pending.length && !this._sync && !this._ackDue) break;
        const ack = this._current.name === "sse" && this._rx > this._acked && this._rx;
        this._sync = this._ackDue = false;
        const batch = [];
        let size = 0;
        for (const message of pending) {
          if (batch.length && (size += message.text.length * 4) > this._maxBody / 2) break;
          batch.push(message);
        }
        const frames = batch.map((message) => message.text);
        if (ack) frames.push(`{"t":"ack","a":${ack}}`);
        const body = "[" + frames.join(",") + "]";
        this._count(batch);
        const started = Date.now();
        const answer = await this._request("POST", `poll?v=1&sid=${sid}`, body, this._options.requestTimeout);
        if (!polling()) break;
        if (answer.status === 200 && Array.isArray(answer.body)) {
          this._sample(Date.now() - started);
          this._postFailures = 0;
          if (ack > this._acked) this._acked = ack;
          const closing = answer.body.some((frame) => frame && frame.t === "close");
          if (this._current.att && !closing) {
            if (this.state !== "open") this._use(this._current);
            if (this._current._idle) this._current._loop();
          }
          this._frames(null, answer.body);
          this._posted = this._serverAck;
          continue;
        }
        const reason = this._error(answer.status, answer.body);
        if (reason === "unknown_session") return this._reset(reason);
        if (FATAL.includes(4e3 + answer.status)) return this._end(4e3 + answer.status, reason);
        if (reason === "not_found" || this._current._idle) return this._current._fail(answer.status > 399 ? 4e3 + answer.status : 0, reason);
        this._posted = this._serverAck;
        if (ack) this._ackDue = true;
        await new Promise((wake) => setTimeout(wake, backoff(this._postFailures++, this._options.backoff)));
      }
    } finally {
      this._posting = false;
      if (this._sid !== sid) this._flush();
    }
  }
  /**
   * One HTTP request to the mount point; resolves `{ status, body }` (body parsed as JSON, or null),
   * or `{ status: 0 }` when the request failed or timed out: it never rejects.
   */
  async _request(method, path, body, timeout, aborts) {
    const abort = new AbortController();
    if (aborts) aborts.add(abort);
    const timer = setTimeout(() => abort.abort(), timeout);
    try {
      const response = await this._options.fetch(`${this._base}/${path}`, {
        // A string body goes as text/plain, which keeps cross-origin POSTs "simple" (no preflight).
        method,
        body,
        credentials: "include",
        signal: abort.signal
      });
      const json = await response.json().catch(() => null);
      return { status: response.status, body: json };
    } catch {
      return { status: 0 };
    } finally {
      clearTimeout(timer);
      if (aborts) aborts.delete(abort);
    }
  }
  /**
   * The error an HTTP answer reports: the server's code (§7), or `not_found` for a 404 that is not
   * the server's own `unknown_session` (the app's page, a proxy's: no Switchboard at that URL).
   */
  _error(status, body) {
    const error = body && body.error;
    return status === 404 && error !== "unknown_session" ? "not_found" : error;
  }
  // --- Endings -----------------------------------------------------------------------------------
  /** The server no longer has our session: start a new one and tell the application. */
  _reset(reason) {
    const unsent = this._out.length;
    const first = this._pick();
    this._stopAll();
    this._giveUp(() => failure("reset"));
    this._fresh();
    this._move("reset");
    this._setTransport(first);
    this._setState("reconnecting");
    this._fire("reset", { reason, unsent });
    if (this.state === "closed") return;
    if (reason === "shutdown") {
      this._timers.retry = setTimeout(() => this._connect(first), backoff(this._attempt++, this._options.backoff));
    } else {
      this._connect(first);
    }
  }
  _end(code, reason) {
    if (this.state === "closed") return;
    this._stopAll();
    this._giveUp(() => failure("closed"));
    this._setTransport(null);
    this._setState("closed");
    const info = { code, reason: reason || "" };
    if (ADVICE[reason]) info.message = this._base + ": " + ADVICE[reason];
    this._fire("close", info);
  }
  _stopAll() {
    for (const transport of [this._current, this._probe, this._racer, this._loser]) if (transport) transport.stop();
    this._current = this._probe = this._racer = this._loser = null;
    for (const name in this._timers) this._clear(name);
  }
  _clear(name) {
    clearTimeout(this._timers[name]);
    this._timers[name] = null;
  }
  _setTransport(name) {
    if (this.transport !== name) {
      this.transport = name;
      if (name) this._fire("transport", name);
    }
  }
  _setState(state) {
    if (this.state !== state) {
      this.state = state;
      this._fire("state", state);
    }
  }
};

// src/index.js
var version = "0.1.0";
function connect(url, options) {
  return new Connection(url, options);
}
export {
  Connection,
  connect,
  version
};
