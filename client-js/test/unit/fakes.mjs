// Fakes of the browser APIs the client uses, driven step by step by the tests.

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
    this.deliver({ t: "open", v: 1, resumed: false, ack: 0, ping: 25000, hold: 20000, resume: 30000, max_message: 65536, max_body: 1048576, ...open });
  }

  deliver(...frames) {
    for (const frame of frames) this.onmessage?.({ data: JSON.stringify(frame) });
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
