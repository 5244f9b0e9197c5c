// Fakes of the browser APIs the client uses, driven step by step by the tests.

/** An open frame with the server's defaults, and `fields`. */
export const openFrame = (fields) => ({ t: "open", v: 1, resumed: false, ack: 0, ping: 25000, hold: 20000, resume: 30000, max_message: 65536, max_body: 1048576, ...fields });

export class FakeWebSocket {
  static instances = [];

  constructor(url) {
    this.url = url;
    this.sent = [];
    this.readyState = 0;
    this.closedWith = null;
    FakeWebSocket.instances.push(this);
  }

  /** The server accepts: the socket opens and the open frame arrives. */
  accept(open) {
    this.readyState = 1;
    this.deliver(openFrame(open));
  }

  /** Whether the client asked for batches (`batch=1`): then every message is an array of frames. */
  get batch() {
    return new URL(this.url).searchParams.get("batch") === "1";
  }

  /** The server sends `frames`, each in its own message (an array of one frame when batching). */
  deliver(...frames) {
    for (const frame of frames) this.message(this.batch ? [frame] : frame);
  }

  /** The server sends `frames` together, in one message (as a batching server does). */
  deliverBatch(...frames) {
    this.message(frames);
  }

  /** One WebSocket message holding `value` as JSON, whatever the client asked for. */
  message(value) {
    this.onmessage?.({ data: JSON.stringify(value) });
  }

  /** The connection ends (refused upgrade: 1006 before open). */
  drop(code = 1006, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  send(text) {
    this.sent.push(JSON.parse(text));
  }

  close(code) {
    this.readyState = 3;
    this.closedWith = code;
  }

  static reset() {
    FakeWebSocket.instances = [];
  }

  static last() {
    return FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
  }
}

/** A fake `fetch`: every call waits until the test answers it. */
export function fakeFetch() {
  const calls = [];
  const fetch = (url, options) =>
    new Promise((resolve, reject) => {
      const call = {
        url,
        method: options.method,
        body: options.body === undefined || options.body === null ? null : JSON.parse(options.body),
        answer(status, body) {
          resolve({ status, json: async () => body });
        },
        /**
         * Answers with a streamed body (an event stream): returns `push(text)` (one chunk),
         * `event(frame, id)` (one SSE event holding `frame`), `end()` and `cut()` (an error).
         */
        stream(status = 200) {
          call.answered = true;
          let controller;
          const body = new ReadableStream({ start: (c) => (controller = c) });
          options.signal?.addEventListener("abort", () => {
            try {
              controller.error(new DOMException("aborted", "AbortError"));
            } catch {}
          });
          resolve({ status, body, json: async () => null });
          const encoder = new TextEncoder();
          const push = (text) => controller.enqueue(encoder.encode(text));
          return {
            push,
            event: (frame, id) => push((id ? `id: ${id}\n` : "") + `data: ${JSON.stringify(frame)}\n\n`),
            end: () => controller.close(),
            cut: () => controller.error(new TypeError("network error")),
          };
        },
        fail() {
          call.answered = true;
          reject(new TypeError("network error"));
        },
      };
      options.signal?.addEventListener("abort", () => {
        call.aborted = true;
        reject(new DOMException("aborted", "AbortError"));
      });
      calls.push(call);
    });
  return { fetch, calls };
}

export function memoryStorage() {
  const map = new Map();
  return {
    getItem: (key) => (map.has(key) ? map.get(key) : null),
    setItem: (key, value) => map.set(key, String(value)),
    map,
  };
}

/** Waits until `condition()` is truthy (polling every 2 ms, at most `ms`). */
export async function until(condition, ms = 2000) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met in time: " + condition);
    await new Promise((wake) => setTimeout(wake, 2));
  }
  return condition();
}

export const tick = (ms = 5) => new Promise((wake) => setTimeout(wake, ms));
