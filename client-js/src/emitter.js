// A minimal event emitter. A listener that throws does not break the connection: its error is
// re-thrown asynchronously, where the page's error reporting sees it.

export class Emitter {
  constructor() {
    this._listeners = new Map();
  }

  /** Subscribes `listener` to `event`. */
  on(event, listener) {
    const list = this._listeners.get(event) || [];
    this._listeners.set(event, [...list, listener]);
    return this;
  }

  /** Subscribes `listener` to the next `event` only; `off` with the same `listener` removes it. */
  once(event, listener) {
    const once = (...args) => {
      this.off(event, once);
      listener(...args);
    };
    once._listener = listener;
    return this.on(event, once);
  }

  /** Removes `listener` from `event` (subscribed with `on` or `once`). */
  off(event, listener) {
    const list = this._listeners.get(event) || [];
    this._listeners.set(event, list.filter((l) => l !== listener && (!l._listener || l._listener !== listener)));
    return this;
  }

  _fire(event, ...args) {
    for (const listener of this._listeners.get(event) || []) {
      try {
        listener(...args);
      } catch (error) {
        setTimeout(() => {
          throw error;
        });
      }
    }
  }
}
