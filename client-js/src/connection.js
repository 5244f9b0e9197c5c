// The connection: one logical session over whichever transport works, with fallback, upgrade,
// resume and exactly-once delivery in both directions (docs/protocol.md §9).

import { backoff } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { encodeMessage, payloadOf } from "./frames.js";
import { TransportMemory } from "./memory.js";
import { PollingTransport } from "./polling.js";
import { SseTransport } from "./sse.js";
import { Stream } from "./stream.js";
import { WebSocketTransport } from "./websocket.js";

const DEFAULTS = {
  transports: ["websocket", "sse", "longpoll", "poll"],
  connectTimeout: 2500,
  raceAfter: 500,
  earlyCloseWindow: 3000,
  pollInterval: 1000,
  requestTimeout: 10000,
  probeDelay: 3000,
  probeMax: 60000,
  rememberFor: 300000,
  maxBuffered: 1000,
  lowPriorityDelay: 50,
};

/** The shortest keep-alive interval the client learns for idle-timeout killers (ms). */
const KEEPALIVE_MIN = 1000;

/** A socket that had carried nothing for this long when it died may have been killed for it (ms). */
const IDLE_DEATH = 750;

/** Two cuts of long polls within this time (ms) move the session to short polling. */
const CUT_WINDOW = 60000;

/** How many entries the transport history of `stats()` keeps (the latest). */
const HISTORY = 32;

/** Connection events that a server event name cannot shadow. */
const RESERVED = ["open", "message", "close", "transport", "state", "reset"];

/** Session close codes after which the client starts a new session (§8). */
const RESET = { 4002: "expired", 4003: "overflow", 4004: "shutdown", 4005: "protocol_error" };

/** Refusals that no retry can fix: bad request, authentication, origin. */
const FATAL = [4400, 4401, 4403];

/** What to check, for the endings a page's developer can fix (the `message` of the close event). */
const ADVICE = {
  __proto__: null,
  not_found: "no Switchboard mount point here (404): check the path given to connect",
  origin_not_allowed: "the server does not allow this page's origin: add it with Builder::allowed_origins",
};

/** Reconnect attempts after which a session that opened here gives up on 404s that are not the server's (see `_down`). */
const LOST = 6;

const CLOSE = '{"t":"close"}';

/** The page's localStorage; undefined where there is none or it may not be used. */
function localStorageIfAny() {
  try {
    return globalThis.localStorage;
  } catch {}
}

/**
 * The error `send` throws, and `request` rejects with: an `Error` whose `code` is `closed`,
 * `buffer_full` or `too_large`; for a request also `timeout` or `reset`.
 */
const failure = (code) => Object.assign(new Error("switchboard: " + code), { code });

const NAMES = ["websocket", "sse", "longpoll", "poll"];
const MS = "a number of ms, at least 0";
const number = (v) => typeof v === "number" && v >= 0 && v < Infinity;

/** What each option must be: a check, and what it says when the value fails it. */
const RULES = {
  __proto__: null,
  transports: [(v) => Array.isArray(v) && v.length && v.every((name, i) => NAMES.includes(name) && v.indexOf(name) === i), "a non-empty list of distinct names of " + NAMES],
  auth: [() => 1],
  backoff: [(v) => v && typeof v === "object" && Object.entries(v).every(([k, n]) => ["min", "max", "jitter"].includes(k) && (n === undefined || (number(n) && (k !== "jitter" || n <= 1)))), "{ min, max, jitter }, each optional (ms; jitter 0 to 1)"],
  maxBuffered: [(v) => Number.isInteger(v) && v > 0, "a whole number, at least 1"],
  WebSocket: [(v) => typeof v === "function", "a constructor"],
  fetch: [(v) => typeof v === "function", "a function"],
  storage: [(v) => v === null || (typeof v === "object" && typeof v.getItem === "function" && typeof v.setItem === "function"), "null or like localStorage"],
};
for (const name of ["connectTimeout", "raceAfter", "earlyCloseWindow", "pollInterval", "requestTimeout", "probeDelay", "probeMax", "rememberFor", "lowPriorityDelay"]) {
  RULES[name] = [number, MS];
}

/**
 * The options given, without those given as `undefined` (which mean their default); throws a
 * `TypeError` naming the first unknown or invalid one.
 */
function checked(options) {
  const given = {};
  for (const [name, value] of Object.entries(options)) {
    if (value === undefined) continue;
    const rule = RULES[name];
    if (!rule) throw new TypeError(`switchboard: unknown option ${name} (known: ${Object.keys(RULES)})`);
    if (!rule[0](value)) throw new TypeError(`switchboard: option ${name} must be ${rule[1]}, not ${describe(value)}`);
    given[name] = value;
  }
  return given;
}

/** A short description of a value for an error message. */
function describe(value) {
  try {
    return typeof value === "function" ? "a function" : JSON.stringify(value).slice(0, 60);
  } catch {
    return String(value);
  }
}

export class Connection extends Emitter {
  constructor(url, options = {}) {
    super();
    const g = globalThis;
    // An option given as `undefined` means its default; an unknown or invalid one throws.
    const given = checked(options || {});
    this._options = {
      ...DEFAULTS,
      WebSocket: g.WebSocket,
      fetch: g.fetch && g.fetch.bind(g),
      storage: localStorageIfAny(),
      ...given,
    };
    this._base = new URL(url, g.location && g.location.href).href.replace(/\/+$/, "");
    this._memory = new TransportMemory(this._options.storage, "switchboard:" + this._base, this._options.rememberFor);
    // How often a WebSocket must carry something (ms), learned from sockets killed when idle.
    this._keepalive = this._memory.value("keepalive");
    this._fresh();
    // Until the open frame tells (with the hold time and body limit), the documented default.
    this._maxMessage = 65536;
    // `_att` numbers this client's transport attempts, so that the server never lets an older one
    // take over from a newer one (§9.1).
    this._att = this._attempt = this._probeAttempt = this._pollAttempt = this._postFailures = 0;
    this._cuts = this._cutRun = this._cutAt = this._takeovers = 0;
    this._timers = {};
    // For `stats()`: counters, and the transports that carried the session (latest last). `_why`
    // (unset at first) tells why the next one does (see `_carry`).
    this._n = { attached: 0, fallbacks: 0, upgrades: 0, resends: 0, resets: 0, sent: 0, received: 0 };
    this._history = [];
    /** The transport in use or being tried, or `null`. */
    this.transport = null;
    /** `connecting`, `open`, `reconnecting` or `closed`. */
    this.state = "connecting";
    /** Resolves with the first `open` event's info; rejects with the `close` event's if that comes first. */
    this.ready = new Promise((resolve, reject) => this.once("open", resolve).once("close", reject));
    // A page that does not use it is not told of its rejection (the close event tells).
    this.ready.catch(() => {});
    // Start on the next turn, so that the page can subscribe to the first events.
    setTimeout(() => this._connect(this._pick()));
  }

  /** Forgets the session: a new one starts from sequence numbers 0. */
  _fresh() {
    this._sid = this._timing = null;
    // `_top`: the highest sequence number sent so far (a message at or below it goes again).
    this._rx = this._acked = this._seq = this._serverAck = this._sent = this._posted = this._top = 0;
    this._out = [];
    // Requests waiting for their reply, by id (`q`, counted from 1 in each session).
    this._q = 0;
    this._pending = new Map();
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
      rtt: rtt == null ? null : Math.round(rtt),
    };
  }

  /** Sends text (a string), JSON (any other value) or binary (`Uint8Array`/`ArrayBuffer`). */
  send(data, options) {
    this._queue(data, undefined, options);
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
  request(event, data, { timeout = 10000, lowPriority } = {}) {
    return new Promise((resolve, reject) => {
      if (typeof timeout !== "number" || !(timeout >= 0)) {
        throw new TypeError(`switchboard: request's timeout must be ${MS} or Infinity, not ${describe(timeout)}`);
      }
      const id = this._q + 1;
      this._queue(data, event ?? undefined, { lowPriority }, id);
      this._q = id;
      // Beyond setTimeout's range (2^31 ms, 24.8 days) a time-out would fire at once: none.
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
    // The close goes over the open socket, after low-priority messages still waiting; or else over
    // HTTP, after what the server may not have yet (so that the session is not left to expire).
    const current = this._current;
    this._clear("flush");
    if (current && current.name === "websocket") this._flush();
    if (this._sid && !(current && current.name === "websocket" && current.send([CLOSE]))) {
      this._goodbye(this._sid, this._out.map((message) => message.text));
    }
    this._end(1000, "closed by client");
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
      const ws = (this._current = new WebSocketTransport(this));
      // A first socket that is late may be hanging in a proxy: after `raceAfter`, open a session
      // over HTTP beside it; whichever opens first is kept, the other one's session is closed.
      if (!this._sid && this._pick(name)) {
        this._timers.race = setTimeout(() => {
          this._timers.race = null;
          if (this._current === ws && !this._sid && !this._racer) this._racer = this._open(this._pick(name));
        }, this._options.raceAfter);
      }
    } else if (name === "sse" && this._sid) {
      // Resume over SSE: the stream's open frame tells what the server has of ours.
      this._current = new SseTransport(this);
    } else if (this._sid) {
      // Resume over polling: poll, and POST (at least `[]`) to learn what the server has of ours.
      // After a failed attempt (the server may be down: a restart) the POST goes alone, and the
      // polls follow once it is answered: one request per try, not two.
      this._current = new PollingTransport(this, name, this._attempt ? null : 0);
      this._posted = this._serverAck;
      this._sync = true;
      this._post();
    } else if (this._racer && this._racer.name === name) {
      // The session the race started over HTTP is the fallback's: take it rather than open another.
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
    const opening = { name, stop: () => (opening.stopped = true) };
    const body = JSON.stringify(this._options.auth === undefined ? {} : { auth: this._options.auth });
    this._request("POST", "open?v=1", body, this._options.requestTimeout).then(({ status, body }) => {
      const ok = status === 200 && body && body.t === "open";
      if (this._racer === opening) {
        this._racer = null;
        // The race is won while no socket has opened (one may be on its way, or waiting to retry);
        // a failure leaves it to the socket.
        if (!ok || this._sid || (this._current && this._current.name !== "websocket")) opening.stopped = true;
        else {
          this._clear("retry");
          this._move("fallback");
          this._loser = this._current;
          this._current = opening;
        }
      }
      if (opening.stopped || this._current !== opening) {
        // Nobody will use this session: end it at once rather than let it wait for expiry.
        if (ok) this._goodbye(body.sid);
      } else if (ok) {
        this._attached((this._current = name === "sse" ? new SseTransport(this) : new PollingTransport(this, name)), body);
      } else {
        this._down(opening, {
          code: status >= 400 ? 4000 + status : 0,
          reason: this._error(status, body),
          status,
          lifetime: 0,
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
    const body = "[" + [...(size < (this._maxBody || 65536) / 2 ? messages : []), CLOSE].join(",") + "]";
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
      // The upgrade probe worked: the server has already released the old transport.
      this._probe = null;
      this._move("upgrade");
      const old = this._current;
      this._current = transport;
      if (old) old.stop();
    } else if (transport !== this._current) {
      // A socket that lost the race opened after all: end its session (nobody uses it). The
      // network lets WebSockets through, so upgrade the session in use soon.
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
    // What the server knows we have: the ack the transport carried (messages may have come in
    // over the old one since), acknowledged again below if it is behind.
    this._acked = transport._ack ?? this._rx;
    this._sent = this._posted = this._serverAck;
    if (this._learned && transport.name === "websocket") {
      // A socket opened after the keep-alive was learned: the network is there, keep the lesson.
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
    // Only now that another transport works is a failed one worth remembering: a server that is
    // down for everything says nothing about the network.
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
      // The socket that lost the race failed too: blocked, not slow, unless the server refused it
      // (4400 and up: the upgrade got through).
      this._loser = null;
      if (this.state === "open" && !opened && !(code >= 4400)) this._memory.remember("websocket");
      return this._scheduleProbe();
    }
    if (transport === this._probe) {
      this._probe = null;
      this._probeAttempt++;
      // If the probe had already taken the session from our poll, go back to polling.
      const back = this._superseded;
      this._superseded = null;
      if (back) this._connect(back);
      // The polls go on; number them above the probe, which may still reach the server (§9.1).
      else if (this._current && this._current.att) this._pollAtt = this._current.att = ++this._att;
      this._scheduleProbe();
      return this._scheduleLongpoll();
    }
    if (transport !== this._current || this.state === "closed") return;
    this._current = this._timing = null;
    // An SSE stream ended to be recycled (§5.7): the next one takes over at once.
    if (reason === "recycle") return this._connect(transport.name);
    if (code === 4409 && this._probe) {
      // Our own upgrade probe took over; it reports next (attached, or failed).
      this._superseded = transport.name;
      return;
    }
    if (code === 4100 || code === 4409) {
      // Taken over by a newer transport that is not ours (our own are ordered by `att`, §9.1):
      // someone else holds the session. Once is a race we may win back; three times running, the
      // session is theirs, and we start a new one.
      if (++this._takeovers >= 3) return this._reset("superseded");
    }
    if (code === 4404) {
      if (reason !== "not_found") return this._reset("unknown_session");
      // A 404 that is not the server's own: nothing at this URL speaks Switchboard (a wrong mount
      // path). Once a session has opened here it may come from an intermediary for a while (a
      // deploy): retried with backoff like a server that is down, and reported if it lasts.
      if (!this._n.attached || this._attempt >= LOST) return this._end(code, reason);
      this._suspects = [];
    }
    if (RESET[code]) return this._reset(RESET[code]);
    if (code === 4000 || code === 4001 || FATAL.includes(code)) return this._end(code, reason);
    const name = transport.name;
    let next = name;
    // A socket superseded (4100) by a request of ours that was still on its way is no sign of a
    // blocking network: it comes back on the same transport (so does a poll answered 409), and
    // so does one closed 1012 (the session moved to another server of a cluster, §5.1).
    // Codes from 4400 up are the server refusing after the upgrade worked: no proxy in the way.
    // An SSE stream is judged the same way: one that brings no open frame in time is hanging or
    // held by a buffering intermediary, and long polling is the way through.
    if (transport instanceof Stream && code !== 4100 && code !== 1012 && code < 4400) {
      if (opened && this._learn(code, idle)) {
        // Killed for being idle, it seems: with keep-alives the next socket lives, so come back on
        // WebSocket (after the usual short backoff: clients cut off together come back spread out).
      } else if (!opened || lifetime < options.earlyCloseWindow) {
        // Refused, hung, or killed right after opening: a proxy in the way. Fall back at once.
        // (A socket that cannot even open right after a keep-alive was learned says the network
        // or the server went away: that death taught nothing.)
        if (!opened && this._learned) this._learned = this._keepalive = undefined;
        next = this._pick(name) || name;
        if (opened) this._probeAttempt++;
      } else {
        this._probeAttempt = 0;
      }
    } else if (name === "longpoll" && this._cut(status, body, lifetime)) {
      // Cut by something between us (a reset, a time-out, a gateway's 502/503/504 without the
      // server's error body) while the poll was idle: no failure, nothing to resume. Poll again
      // at once; after two cuts within a minute, short polls are the transport that gets through.
      const now = Date.now();
      if (now - this._cutAt > CUT_WINDOW) this._cuts = 0;
      this._cutAt = now;
      const fallback = ++this._cuts >= 2 && this._pick(name);
      if (fallback) {
        this._memory.remember(name);
        this._move("fallback");
        return this._repoll(fallback);
      }
      // Cut after cut with no answer between them (a gateway in front of a server that is down)
      // waits a little longer each time.
      return this._repoll(name, this._cutRun++ ? backoff(this._cutRun - 2, options.backoff) : 0);
    } else if (!(transport instanceof Stream)) {
      // Polling failed too: the server (or the whole network) is down, which says nothing about
      // the transports that failed before.
      this._suspects = [];
    }
    if (next !== name) {
      (this._suspects ||= []).push(name);
      this._move("fallback");
    } else {
      this._why ||= "reconnect";
      if (code === 1006 && !opened && !this._n.attached && !this._asked) {
        // A refused handshake tells the page nothing (a wrong path, a disallowed origin, §13), and
        // there is no HTTP transport to try: ask over HTTP, whose refusals it can read, until the
        // server answers.
        this._asked = 1;
        this._request("GET", "poll?v=1", null, options.requestTimeout).then(({ status, body }) => {
          const reason = this._error(status, body);
          // Asked again after the next refused handshake unless the server itself answered (its
          // JSON error) or nothing is mounted there; a session that opened meanwhile is fine.
          this._asked = (body && body.error) || reason === "not_found" ? status : 0;
          if (this.state === "closed" || this._n.attached) return;
          if (reason === "origin_not_allowed" || reason === "not_found") this._end(4000 + status, reason);
        });
      }
    }
    // Tell what is being tried before saying that it is not open yet.
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
    return (!status || gateway) && lifetime > Math.min(1000, this._hold / 4) && lifetime < this._hold * 0.9;
  }

  /** Goes on polling the session as `name` ("longpoll" or "poll"), without reconnecting. */
  _repoll(name, delay) {
    this._carry((this._current = new PollingTransport(this, name, delay)));
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
    return (this._learned = true);
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
    const why = fresh ? (this._n.resets ? "reset" : "open") : this._why;
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
    for (const { seq } of batch) seq > this._top ? (this._top = seq) : this._n.resends++;
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
    if ((transport && transport !== this._current) || !frame) return;
    if (frame.t === "m") {
      if (frame.s <= this._rx) return;
      // A gap cannot happen with a correct server; resume from what we have.
      if (frame.s !== this._rx + 1) return this._current && this._current._fail(0);
      this._rx = frame.s;
      this._n.received++;
      const data = payloadOf(frame);
      // A reply settles its request (one that gave up already drops it), and is no message.
      if (frame.p !== undefined) this._answer(frame.p, null, data);
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
    // Frames of other types are ignored: later versions may add some (§2).
  }

  /** Hands a message to the application: the `message` event, and its named event. */
  _message(frame, data) {
    const info = { seq: frame.s };
    if (frame.e !== undefined) info.event = frame.e;
    this._fire("message", data, info);
    if (frame.e !== undefined && !RESERVED.includes(frame.e)) this._fire(frame.e, data, info);
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
        // Timed until the server acknowledges them (it does at once, §5.1).
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
        // On SSE the POST acknowledges what the stream brought (whenever it goes anyway).
        const ack = this._current.name === "sse" && this._rx > this._acked && this._rx;
        this._sync = this._ackDue = false;
        const batch = [];
        let size = 0;
        for (const message of pending) {
          // Stay well below max_body even if every character takes 4 bytes in UTF-8.
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
          // The server has the session and answers over HTTP: the polling transport carries.
          const closing = answer.body.some((frame) => frame && frame.t === "close");
          if (this._current.att && !closing) {
            if (this.state !== "open") this._use(this._current);
            // A resume whose POST went first (see `_connect`) polls from now on.
            if (this._current._idle) this._current._loop();
          }
          this._frames(null, answer.body);
          // Its ack says what arrived; what did not (the application was slow to take messages,
          // or a gap) goes again.
          this._posted = this._serverAck;
          continue;
        }
        const reason = this._error(answer.status, answer.body);
        if (reason === "unknown_session") return this._reset(reason);
        if (FATAL.includes(4000 + answer.status)) return this._end(4000 + answer.status, reason);
        // A 404 that is not the server's, or the first POST of a resume that failed: the transport
        // reports it (see `_down`).
        if (reason === "not_found" || this._current._idle) return this._current._fail(answer.status > 399 ? 4000 + answer.status : 0, reason);
        // Lost or refused for now: send again what the server has not acknowledged.
        this._posted = this._serverAck;
        if (ack) this._ackDue = true;
        await new Promise((wake) => setTimeout(wake, backoff(this._postFailures++, this._options.backoff)));
      }
    } finally {
      this._posting = false;
      // A new session may have started meanwhile, and its sends waited for this loop to end.
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
        signal: abort.signal,
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
      // `null` only when the connection ends; the state event tells that.
      if (name) this._fire("transport", name);
    }
  }

  _setState(state) {
    if (this.state !== state) {
      this.state = state;
      this._fire("state", state);
    }
  }
}
