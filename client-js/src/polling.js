// The polling transports (docs/protocol.md §5.2–5.4): `GET /poll` in a loop, held by the server
// (long polling) or answered at once and repeated on an interval (short polling). Client frames go
// up in `POST /poll`, which the connection drives.

export class PollingTransport {
  /**
   * Polls for `conn`'s session (which must exist) and reports `_frames(transport, frames)` and, once,
   * `_down(transport, { code, reason, status, body, lifetime })` when a poll fails.
   * @param {"longpoll" | "poll"} name
   */
  constructor(conn, name, delay) {
    this.name = name;
    this._conn = conn;
    this._aborts = new Set();
    // Every poll of this loop carries its attach number (§9.1); the connection may raise it. A
    // loop started while an upgrade probe is on its way keeps the loop's number before it, which
    // is lower than the probe's: if the probe attaches, these polls are refused, not the probe.
    this.att = conn._probe && conn._pollAtt ? conn._pollAtt : ++conn._att;
    conn._pollAtt = this.att;
    // Start once the connection has taken the session's open frame (same turn, just after), after
    // `delay`, or (`delay` null) when the connection calls `_loop` (`_idle` until then).
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
        this._aborts,
      );
      if (this._stopped) return;
      const lifetime = Date.now() - started;
      if (answer.status !== 200 || !Array.isArray(answer.body)) {
        this._stopped = true;
        return conn._down(this, {
          code: answer.status >= 400 && answer.status < 600 ? 4000 + answer.status : 0,
          reason: conn._error(answer.status, answer.body),
          status: answer.status,
          body: answer.body,
          lifetime,
        });
      }
      if (long && lifetime >= conn._hold * 0.9) conn._held();
      // A short poll is answered at once: a round trip.
      if (!long) conn._sample(lifetime);
      conn._acked = Math.max(conn._acked, ack);
      conn._frames(this, answer.body);
      if (!long && !this._stopped) await new Promise((wake) => (this._wake = setTimeout(wake, options.pollInterval)));
    }
  }

  /** Gives up on this transport (for example after a sequence gap) and reports it. */
  _fail(code, reason) {
    if (this._stopped) return;
    this.stop();
    this._conn._down(this, { code, reason, status: 0, lifetime: Infinity });
  }

  /** Polling writes nothing itself: client frames go up in POSTs. */
  send() {}

  /** Stops polling and abandons the request in flight. */
  stop() {
    this._stopped = true;
    clearTimeout(this._wake);
    for (const abort of this._aborts) abort.abort();
  }
}
