// The Server-Sent Events transport (docs/protocol.md §5.7): the server's frames come down one
// streamed response of `GET /sse`, read with fetch; the client's go up in `POST /poll`, which the
// connection drives (with the acknowledgements).

import { Stream } from "./stream.js";

/** How a stream's ending event (§5.7) is reported to the connection, as a close code. */
const ENDS = { superseded: 4409, moved: 1012, recycle: 1012 };

export class SseTransport extends Stream {
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
        `${conn._base}/sse?v=1&sid=${conn._sid}&ack=${(this._ack = conn._rx)}&att=${this._att}`,
        { credentials: "include", signal: this._abort.signal },
      );
      if (response.status !== 200) {
        // The server's refusals carry its JSON error (§7); anything else is an intermediary in
        // the way, as good as no stream at all, except a 404 (`not_found`, no Switchboard there).
        const error = conn._error(response.status, await response.json().catch(() => null));
        return this._fail(error ? 4000 + response.status : 0, error);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let rest = "";
      let data = "";
      let event = "";
      for (;;) {
        const { done, value } = await reader.read();
        if (done || this._stopped) break;
        this._heard = Date.now();
        const lines = (rest + decoder.decode(value, { stream: true })).split(/\r?\n/);
        rest = lines.pop();
        for (const line of lines) {
          if (this._stopped) return;
          if (line) {
            // `field: value`; a line starting with a colon is a comment (the heartbeat).
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
      // The connection dropped, or `stop` aborted it.
    }
    // The stream ended without saying why: the transport died.
    this._fail(0);
  }

  _close() {
    this._abort.abort();
  }
}
