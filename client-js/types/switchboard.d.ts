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

/** Details of a received message. */
export interface MessageInfo {
  /** The event name, if the server sent one. */
  event?: string;
  /** The message's sequence number in this session. */
  seq: number;
}

/** Why the connection closed for good. */
export interface CloseInfo {
  /** A session close code (4000–4005), `4000 + HTTP status` for a refused session, or 1000 for a local close. */
  code: number;
  /** The reason text. */
  reason: string;
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

/** The error `send` throws when it cannot take a message. */
export interface SwitchboardError extends Error {
  /** `buffer_full`, `too_large` or `closed`. */
  code: string;
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
  /** Messages delivered to the application (`message` events: each once). */
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
  open: (info: { sid: string; resumed: boolean }) => void;
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
  /** Subscribes to a connection event, or to a named event sent with `emit` by the server. */
  on<K extends keyof ConnectionEvents>(event: K, listener: ConnectionEvents[K]): this;
  on(event: string, listener: (data: unknown, info: MessageInfo) => void): this;
  /** Removes a listener. */
  off(event: string, listener: (...args: any[]) => void): this;
  /** Sends text (a string), JSON (any other value) or binary (`Uint8Array`/`ArrayBuffer`). */
  send(data: unknown, options?: SendOptions): void;
  /** Sends a named event. */
  emit(event: string, data: unknown, options?: SendOptions): void;
  /** Ends the session. */
  close(): void;
  /** A snapshot of the transport history, the counters and the round-trip estimate (see {@link Stats}). */
  stats(): Stats;
}

/** Opens a connection to a Switchboard mount point, such as `"/realtime"` or `"https://host/realtime"`. */
export function connect(url: string, options?: ConnectOptions): Connection;

/** The client library's version. */
export const version: string;
