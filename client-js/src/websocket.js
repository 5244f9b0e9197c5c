// The WebSocket transport (docs/protocol.md §5.1): one socket, frames both ways; the server's come
// in batches (JSON arrays of frames, `batch=1`).

import { Stream } from "./stream.js";

export class WebSocketTransport extends Stream {
  /** Opens a socket for `conn`'s session, or for a new session when it has none. */
  constructor(conn) {
    super(conn, "websocket");
    const options = conn._options;
    let url = conn._base.replace(/^http/, "ws") + `/ws?v=1&batch=1&att=${this._att}`;
    if (conn._sid) url += `&sid=${conn._sid}&ack=${(this._ack = conn._rx)}`;
    else if (options.auth !== undefined) url += "&auth=" + encodeURIComponent(JSON.stringify(options.auth));
    const ws = (this._ws = new options.WebSocket(url));
    ws.onmessage = (event) => this._receive(event.data);
    ws.onclose = (event) => this._fail(event.code, event.reason);
  }

  /** Writes frames, if the socket is open; returns whether it was. */
  send(frames) {
    if (this._openedAt && this._ws.readyState === 1) {
      for (const frame of frames) this._ws.send(frame);
      return (this._active = Date.now());
    }
  }

  _close() {
    this._ws.onmessage = this._ws.onclose = null;
    try {
      this._ws.close(1000);
    } catch {
      // Already closing.
    }
  }
}
