// The WebSocket transport (docs/protocol.md §5.1): one socket, frames both ways; the server's come
// in batches (JSON arrays of frames, `batch=1`).

export class WebSocketTransport {
  /**
   * Opens a socket for `conn`'s session (or a new session when it has none) and reports to the
   * connection: `_attached(transport, openFrame)`, `_frame(transport, frame)` and, once, when the
   * socket fails or closes, `_down(transport, { code, reason, opened, lifetime, idle })`.
   */
  constructor(conn) {
    this.name = "websocket";
    this._conn = conn;
    const options = conn._options;
    this.att = ++conn._att;
    let url = conn._base.replace(/^http/, "ws") + `/ws?v=1&batch=1&att=${this.att}`;
    if (conn._sid) url += `&sid=${conn._sid}&ack=${(this._ack = conn._rx)}`;
    else if (options.auth !== undefined) url += "&auth=" + encodeURIComponent(JSON.stringify(options.auth));
    const ws = (this._ws = new options.WebSocket(url));
    this._timer = setTimeout(() => this._fail(0), options.connectTimeout);
    ws.onmessage = (event) => this._receive(event.data);
    ws.onclose = (event) => this._fail(event.code, event.reason);
  }

  _receive(text) {
    let frames;
    try {
      // With `batch=1` each message is an array of frames; a lone frame is taken as well.
      frames = [].concat(JSON.parse(text));
    } catch {
      return this._fail(1007);
    }
    this._heard = this._active = Date.now();
    for (const frame of frames) {
      // A frame that stopped this transport (close, takeover, sequence gap) ends the batch; so
      // does a `close` before the open frame (the transport fails). Other frames before it are
      // ignored, like frames of unknown types (§2).
      if (this._stopped) return;
      if (this._openedAt) this._conn._frame(this, frame);
      else if (frame && frame.t === "open") this._open(frame);
      else if (frame && frame.t === "close") this._fail(frame.code || 1002, frame.reason);
    }
  }

  _open(frame) {
    this._openedAt = this._heard;
    clearTimeout(this._timer);
    // A socket that hears nothing (not even a ping) for ping + 10 s is dead. With a keep-alive
    // learned from idle-timeout killers, a ping goes out whenever the socket has carried nothing
    // for that long (checked four times as often), so it is never quiet for much longer.
    const limit = frame.ping + 10000;
    const keepalive = this._conn._keepalive;
    const every = Math.min(limit / 4, 5000, keepalive / 4 || Infinity);
    this._timer = setInterval(() => {
      const now = Date.now();
      if (now - this._heard > limit) this._fail(0);
      else if (now - this._active >= keepalive) this.send(['{"t":"ping"}']);
    }, every);
    this._conn._attached(this, frame);
  }

  /** Writes frames, if the socket is open; returns whether it was. */
  send(frames) {
    if (this._openedAt && this._ws.readyState === 1) {
      for (const frame of frames) this._ws.send(frame);
      return (this._active = Date.now());
    }
  }

  _fail(code, reason) {
    if (this.stop()) {
      const now = Date.now();
      this._conn._down(this, {
        code,
        reason,
        opened: !!this._openedAt,
        lifetime: this._openedAt ? now - this._openedAt : 0,
        idle: this._openedAt ? now - this._active : 0,
      });
    }
  }

  /** Stops the transport quietly (switch, close or failure); returns whether it was still running. */
  stop() {
    if (this._stopped) return false;
    this._stopped = true;
    // clearInterval also clears a timeout (the connect deadline): they share one id space.
    clearInterval(this._timer);
    this._ws.onmessage = this._ws.onclose = null;
    try {
      this._ws.close(1000);
    } catch {
      // Already closing.
    }
    return true;
  }
}
