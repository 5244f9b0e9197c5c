// Remembers, across page loads, what this network taught: which transports recently failed here
// (so that the next connection skips the wait) and how often a WebSocket must carry something to
// outlive an idle-timeout killer. Entries expire: a stale memory must never pin a user to polling.

export class TransportMemory {
  /**
   * @param {Pick<Storage, "getItem" | "setItem"> | null} storage
   * @param {string} key storage key (one per mount URL)
   * @param {number} ttl how long an entry is remembered, in ms
   */
  constructor(storage, key, ttl, now = Date.now) {
    this._storage = storage;
    this._key = key;
    this._ttl = ttl;
    this._now = now;
  }

  // Without storage (private mode, Node without one) nothing is remembered.
  _read() {
    try {
      return JSON.parse(this._storage.getItem(this._key)) || {};
    } catch {
      return {};
    }
  }

  _write(entries) {
    try {
      this._storage.setItem(this._key, JSON.stringify(entries));
    } catch {
      // No storage, or full: forget.
    }
  }

  /** Whether `name` failed within the remembered period. */
  failed(name) {
    const until = this._read()[name];
    return typeof until === "number" && until > this._now();
  }

  /** Records that `name` failed now. */
  remember(name) {
    this._write({ ...this._read(), [name]: this._now() + this._ttl });
  }

  /** Forgets a failure of `name` (it worked again). */
  forget(name) {
    const entries = this._read();
    if (name in entries) {
      delete entries[name];
      this._write(entries);
    }
  }

  /** A value stored with `store` within the remembered period, or undefined. */
  value(name) {
    const entry = this._read()[name];
    if (entry && entry.until > this._now()) return entry.value;
  }

  /** Keeps `value` under `name` for the remembered period. */
  store(name, value) {
    this._write({ ...this._read(), [name]: { value, until: this._now() + this._ttl } });
  }
}
