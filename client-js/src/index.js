// Switchboard's JavaScript client: one ordered, lossless channel to a Switchboard server over
// WebSocket, long polling or short polling, with automatic fallback and upgrade.

import { Connection } from "./connection.js";

/** The client library's version. */
export const version = "0.1.0";

/** Opens a connection to a Switchboard mount point, such as `"/realtime"`. */
export function connect(url, options) {
  return new Connection(url, options);
}

export { Connection };
