// Type declarations for the Switchboard JavaScript client (hand-written; see src/).

/** A transport the client can use, in the server protocol's terms. */
export type TransportName = "websocket" | "sse" | "longpoll" | "poll";

/** The connection's state. */
export type State = "connecting" | "open" | "reconnecting" | "closed";

/** Options of {@link connect}. Every field is optional. */
export interface ConnectOptions {
  /**
   * Transports to use, best first. Default: `["websocket", "sse", "longpoll", "poll"]`. `sse` is
   * Server-Sent Events read with `fetch` (the server's frames down one streamed response, the
   * client's up in POSTs); a stream whose open event, or the server's probe after it, does not
   * arrive within `connectTimeout` (an intermediary that buffers it) gives way to long polling,
   * and that is remembered.
   */
  transports?: TransportName[];
  /** Authentication data handed to the server's authentication hook. */
  auth?: unknown;
  /**
   * How long a WebSocket or an SSE stream may take to deliver its open frame before falling back
   * (ms), and how long an SSE stream's probe may take after the open frame. Default 2500.
   */
  connectTimeout?: number;
  /**
   * A first WebSocket that has not opened after this many ms gets a polling session opened beside
   * it; whichever opens first is kept and the other session closed. Default 500.
   */
  raceAfter?: number;
  /** A WebSocket that dies within this many ms of opening counts as blocked (ms). Default 3000. */
  earlyCloseWindow?: number;
  /** Interval between short polls (ms). Default 1000. */
  pollInterval?: number;
  /** Timeout of one HTTP request, on top of the server's hold time for long polls (ms). Default 10000. */
  requestTimeout?: number;
  /** Reconnect backoff: first delay, cap (ms) and randomised share. Default 250, 10000, 0.5. */
  backoff?: { min?: number; max?: number; jitter?: number };
  /** First delay before probing WebSocket again while on a fallback, doubling up to `probeMax` (ms). Default 3000. */
  probeDelay?: number;
  /** Cap of the WebSocket probe delay (ms). Default 60000. */
  probeMax?: number;
  /** How long a transport that failed is skipped on later page loads (ms). Default 300000 (5 min). */
  rememberFor?: number;
  /** Most messages kept while unacknowledged or waiting to be sent; `send` throws beyond it. Default 1000. */
  maxBuffered?: number;
  /** How long low-priority sends may wait to be batched (ms). Default 50. */
  lowPriorityDelay?: number;
  /** Injection points for tests and non-browser runtimes. */
  WebSocket?: typeof WebSocket;
  fetch?: typeof fetch;
  storage?: Pick<Storage, "getItem" | "setItem"> | null;
}

/** Options of {@link Connection.send} and {@link Connection.emit}. */
export interface SendOptions {
  /** May wait up to `lowPriorityDelay` to go out with other messages. */
  lowPriority?: boolean;
}

/** Options of {@link Connection.request}. */
export interface RequestOptions extends SendOptions {
  /**
   * How long to wait for the reply (ms), default 10000; `Infinity` waits as long as the session
   * lasts. A reply that comes after it is dropped.
   */
  timeout?: number;
}

/** Details of a received message. */
export interface MessageInfo {
  /** The event name, if the server sent one. */
  event?: string;
  /** The message's sequence number in this session (replies to requests take numbers too, so it may skip some). */
  seq: number;
}

/** Details of an `open` event: a new session (the first, or one after a reset). */
export interface OpenInfo {
  /** The session id (a bearer secret: do not log it). */
  sid: string;
  /** Always `false`: resumes of the same session are no `open` event. */
  resumed: boolean;
}

/**
 * Why the connection closed for good. Besides the server's own close codes, the client ends with:
 * - `4400`, `4401`, `4403` and the server's error code as `reason`: a refusal no retry can fix
 *   (a bad request, the authentication hook's `unauthorized` or `forbidden`, and
 *   `origin_not_allowed`: the server does not allow the page's origin, which the client learns
 *   over HTTP even when its WebSocket handshake was refused invisibly);
 * - `4404` with reason `not_found`: the URL answered `404` without the server's own JSON body
 *   (`unknown_session`, which never ends a connection: it resets the session), so there is no
 *   Switchboard mount point there: a wrong path in `connect`, most likely. A connection that has
 *   never opened ends at the first such answer; one that has opened a session at that URL goes on
 *   retrying with backoff (an intermediary may answer `404` for a moment, as in a deploy) and ends
 *   at such an answer once 6 reconnect attempts in a row have failed (8 to 16 s with the default
 *   backoff);
 * - `1000`, reason `closed by client`: {@link Connection.close}.
 */
export interface CloseInfo {
  /** A session close code (4000–4005), `4000 + HTTP status` for a refused session, or 1000 for a local close. */
  code: number;
  /** The reason: the session's close reason, the server's error code, or `not_found`. */
  reason: string;
  /**
   * What to check, for the two endings a page's developer can fix (`not_found`,
   * `origin_not_allowed`): a sentence naming the mount URL, such as
   * `"https://example.com/rt: no Switchboard mount point here (404): check the path given to connect"`
   * or `"…: the server does not allow this page's origin: add it with Builder::allowed_origins"`.
   * Absent otherwise.
   */
  message?: string;
}

/** Details of a reset: the server no longer had the session; a new one was opened. */
export interface ResetInfo {
  /**
   * Why the old session ended: `unknown_session`, `expired`, `overflow`, `shutdown` or
   * `protocol_error`; or `superseded`: a transport that was not ours took it over three times running.
   */
  reason: string;
  /** Messages that had not been acknowledged by the old session and were discarded. */
  unsent: number;
}

/** The error `send` throws when it cannot take a message, and the one a request rejects with. */
export interface SwitchboardError extends Error {
  /**
   * `buffer_full`, `too_large` or `closed`; for a request also `timeout` (no reply in time) and
   * `reset` (the server lost the session, so nothing will answer), and `closed` when the
   * connection ends while the request waits.
   */
  code: "buffer_full" | "too_large" | "closed" | "timeout" | "reset";
}

/**
 * Why a transport came to carry the session (an entry of {@link Stats.transports}):
 * - `open`: the first transport of the connection's first session (even when the client had to
 *   fall back before it: {@link Stats.fallbacks} counts that);
 * - `reset`: the first transport of a new session after a reset (the `reset` event);
 * - `fallback`: the session moved down the `transports` order (a WebSocket or SSE stream refused,
 *   hung, held by an intermediary or killed right after opening; long polls cut twice);
 * - `upgrade`: it moved up (a WebSocket probe took over from SSE or polling; short polling tried
 *   long polls again);
 * - `reconnect`: the same kind of transport again, after the last one failed or was cut (a dropped
 *   socket, a failed poll, a takeover, a socket closed `1012`).
 *
 * Routine renewals are no new entry: an SSE stream recycled by the server, a long poll cut by an
 * intermediary and polled again at once, polling going on after a WebSocket probe that failed.
 */
export type TransportWhy = "open" | "reset" | "fallback" | "upgrade" | "reconnect";

/** One entry of the transport history: a transport that carried the session. */
export interface TransportEntry {
  /** The transport. */
  transport: TransportName;
  /**
   * When it took over, as a `Date.now()` value: its open frame, or its first answer over HTTP (for
   * a move between long and short polling, the move itself).
   */
  at: number;
  /** Why it came (see {@link TransportWhy}). */
  why: TransportWhy;
}

/**
 * What a connection went through, for the application's own analytics ({@link Connection.stats}).
 * Plain data, new on every call: keep it, change it or `JSON.stringify` it; the connection is not
 * affected. Counters cover the connection's whole life (across resets) and only grow.
 */
export interface Stats {
  /** The transport in use or being tried now, as {@link Connection.transport} (`null` before the first attempt and once closed). */
  transport: TransportName | null;
  /** The connection's state now, as {@link Connection.state}. */
  state: State;
  /**
   * The transports that carried the session, oldest first: the latest 32 (older entries are
   * dropped; {@link Stats.attached} counts them all).
   */
  transports: TransportEntry[];
  /** How many entries the transport history has had in all, including those it dropped. */
  attached: number;
  /**
   * How many times the client moved down the `transports` order, to a worse transport: every step
   * counts (WebSocket refused, then SSE held: 2), including a first polling session winning the
   * race against a late first socket.
   */
  fallbacks: number;
  /** How many times it moved up the order: a WebSocket probe taking over, short polling trying long polls again. */
  upgrades: number;
  /**
   * How many messages of the application's went out more than once (counted one by one, not by
   * batch): sent again on a new transport because the server had not acknowledged them when the
   * old one went away, or in a POST again after one that failed or whose answer did not
   * acknowledge them all. The server drops the duplicates.
   */
  resends: number;
  /** How many session resets happened (the `reset` event; counted before it fires). */
  resets: number;
  /** Messages the application handed to `send` or `emit` (and that were accepted). */
  sent: number;
  /**
   * Messages received from the server, each once: `message` events, and replies to requests
   * (including a late one that was dropped because its request had given up).
   */
  received: number;
  /**
   * The round-trip estimate in ms (rounded), or `null` before the first measurement. Each sample is
   * the time from sending something to the server's answer to it: a `POST` to its response (SSE
   * and polling), a short poll to its response, messages on a WebSocket to the server's `ack` of
   * them, a keep-alive `ping` to its `pong`. Smoothed like TCP's SRTT (each sample moves the
   * estimate an eighth of the way to it). No traffic is added to measure: over a WebSocket that
   * sends nothing (without keep-alives), or long polls that only receive, it stays as it was (or
   * `null`). A sample includes the time the server waited for its application to take messages
   * (back-pressure), if it had to.
   */
  rtt: number | null;
}

export interface ConnectionEvents {
  open: (info: OpenInfo) => void;
  message: (data: unknown, info: MessageInfo) => void;
  close: (info: CloseInfo) => void;
  /** `transport` changed (see {@link Connection.transport}). */
  transport: (name: TransportName) => void;
  state: (state: State) => void;
  reset: (info: ResetInfo) => void;
}

/** One logical channel to the server: ordered, exactly once, whatever the transport. */
export interface Connection {
  /**
   * The transport in use or being tried right now (`state` tells whether it carries yet), never one
   * the client has given up on; `null` before the first attempt and after the connection closed.
   */
  readonly transport: TransportName | null;
  /** The connection's state. */
  readonly state: State;
  /**
   * Settles once: resolves with the first `open` event's info, or rejects with the `close` event's
   * info ({@link CloseInfo}, not an `Error`) if the connection ends before it ever opened (refused,
   * `not_found`, or `close()` called first). A later reset that opens a new session does not change
   * it: it stays the first, resolved promise (listen to `open` for every new session). A page that
   * never uses it gets no unhandled rejection.
   */
  readonly ready: Promise<OpenInfo>;
  /** Subscribes to a connection event, or to a named event sent with `emit` by the server. */
  on<K extends keyof ConnectionEvents>(event: K, listener: ConnectionEvents[K]): this;
  on(event: string, listener: (data: unknown, info: MessageInfo) => void): this;
  /** Like {@link Connection.on}, for the next such event only; `off` with the same listener removes it before that. */
  once<K extends keyof ConnectionEvents>(event: K, listener: ConnectionEvents[K]): this;
  once(event: string, listener: (data: unknown, info: MessageInfo) => void): this;
  /** Removes a listener (added with `on` or `once`). */
  off(event: string, listener: (...args: any[]) => void): this;
  /** Sends text (a string), JSON (any other value) or binary (`Uint8Array`/`ArrayBuffer`). */
  send(data: unknown, options?: SendOptions): void;
  /** Sends a named event. */
  emit(event: string, data: unknown, options?: SendOptions): void;
  /**
   * Sends a request, a message named `event` (or unnamed, `null`) that the server's application
   * answers with `Session::reply`, and resolves with the reply's payload (JSON, text, or a
   * `Uint8Array`). It travels like every message: in order, exactly once, resent across a transport
   * switch, so a reply pending across a dropped socket still comes, once. Rejects with a
   * {@link SwitchboardError}: `timeout`, `reset`, `closed`, or what `send` would throw (and with a
   * `TypeError` for a `timeout` that is not a number of ms). A reply is no `message` event. A
   * server application that does not answer lets it time out.
   */
  request<T = unknown>(event: string | null, data: unknown, options?: RequestOptions): Promise<T>;
  /** Ends the session. */
  close(): void;
  /** A snapshot of the transport history, the counters and the round-trip estimate (see {@link Stats}). */
  stats(): Stats;
}

/**
 * Opens a connection to a Switchboard mount point, such as `"/realtime"` or `"https://host/realtime"`.
 * Throws a `TypeError` naming the option for an unknown option or an invalid value (an option given
 * as `undefined` means its default).
 */
export function connect(url: string, options?: ConnectOptions): Connection;

/** The client library's version. */
export const version: string;
