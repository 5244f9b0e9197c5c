// What the two streaming transports share (WebSocket, §5.1, and Server-Sent Events, §5.7): frames
// come down one long-lived connection, the first of them the open frame; a connection that says
// nothing for too long is dead.

export class Stream {
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
      // A frame that stopped this transport (close, takeover, sequence gap) ends the batch; so
      // does a `close` before the open frame (the transport fails). Other frames before it are
      // ignored, like frames of unknown types (§2).
      if (this._stopped) return;
      if (this._openedAt) {
        if (frame && frame.t === "ping") this._pinged = true;
        this._conn._frame(this, frame);
      }
      else if (frame && frame.t === "open") this._open(frame);
      else if (frame && frame.t === "close") this._fail(frame.code || 1002, frame.reason);
    }
  }

  _open(frame) {
    this._openedAt = this._heard;
    clearTimeout(this._timer);
    // A stream that hears nothing for this long is dead: on WebSocket ping + 10 s (the server
    // pings), on SSE 45 s (the server's comments come every 15 s). With a keep-alive learned from
    // idle-timeout killers, a WebSocket pings whenever it has carried nothing for that long
    // (checked four times as often), so it is never quiet for much longer.
    const sse = this.name === "sse";
    const limit = sse ? 45000 : frame.ping + 10000;
    const keepalive = this._conn._keepalive;
    if (sse) this._deadline = setTimeout(() => this._pinged || this._fail(0, "held", true), this._conn._options.connectTimeout);
    this._timer = setInterval(
      () => {
        const now = Date.now();
        if (now - this._heard > limit) this._fail(0);
        // A keep-alive sent times a round trip (to its pong) if none is being timed.
        else if (now - this._active >= keepalive && this.send(['{"t":"ping"}'])) this._conn._timing ||= [Infinity, now];
      },
      Math.min(limit / 4, 5000, keepalive / 4 || Infinity),
    );
    this._conn._attached(this, frame);
  }

  /** Writes frames if the transport can (only a WebSocket can); returns whether it did. */
  send() {}

  _fail(code, reason, held) {
    if (this.stop()) {
      const now = Date.now();
      this._conn._down(this, {
        code,
        reason,
        opened: !held && !!this._openedAt,
        lifetime: this._openedAt ? now - this._openedAt : 0,
        idle: this._openedAt ? now - this._active : 0,
      });
    }
  }

  /** Stops the transport quietly (switch, close or failure); returns whether it was still running. */
  stop() {
    if (this._stopped) return false;
    this._stopped = true;
    // clearInterval also clears a timeout (the open deadline): they share one id space.
    clearInterval(this._timer);
    clearTimeout(this._deadline);
    this._close();
    return true;
  }
}
