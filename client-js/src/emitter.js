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

  /** Removes `listener` from `event`. */
  off(event, listener) {
    const list = this._listeners.get(event) || [];
    this._listeners.set(event, list.filter((l) => l !== listener));
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
