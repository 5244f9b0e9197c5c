// Switchboard JavaScript client: placeholder until the client-js package is built.
// The route that serves this file (GET <mount>/client.js) and its caching headers are final.
(function (global) {
  "use strict";
  global.Switchboard = global.Switchboard || {
    version: "0.0.0-placeholder",
    connect: function () {
      throw new Error("the Switchboard client has not been built into this server yet");
    },
  };
})(typeof globalThis !== "undefined" ? globalThis : this);
