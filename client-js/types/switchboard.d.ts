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
}

/** Opens a connection to a Switchboard mount point, such as `"/realtime"` or `"https://host/realtime"`. */
export function connect(url: string, options?: ConnectOptions): Connection;

/** The client library's version. */
export const version: string;
