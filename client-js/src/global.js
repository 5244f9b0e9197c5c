// Entry point of the script-tag build: defines the global `Switchboard`.

import { connect, Connection, version } from "./index.js";

globalThis.Switchboard = { connect, Connection, version };
