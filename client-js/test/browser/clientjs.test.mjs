// (e) The served client script: JavaScript content type, an ETag, 304 on If-None-Match, and the
// script the server was built with is the current build of the client.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { REPO_ROOT, cleanup, scaled, startServer } from "./harness.mjs";

test("GET /rt/client.js: content type, ETag, 304", { timeout: scaled(60000) }, async (t) => {
  const defer = cleanup(t);
  const server = await startServer();
  defer(() => server.stop());
  const url = `${server.url}/rt/client.js`;

  const first = await fetch(url, { signal: AbortSignal.timeout(scaled(10000)) });
  assert.equal(first.status, 200);
  assert.match(first.headers.get("content-type") ?? "", /^(text|application)\/javascript\b/);
  const etag = first.headers.get("etag");
  assert.ok(etag && /^(W\/)?".+"$/.test(etag), `ETag: ${etag}`);
  const body = await first.text();
  assert.ok(body.length > 0);

  const second = await fetch(url, {
    headers: { "If-None-Match": etag },
    signal: AbortSignal.timeout(scaled(10000)),
  });
  assert.equal(second.status, 304);
  assert.equal(second.headers.get("etag"), etag);
  assert.equal(await second.text(), "");

  const other = await fetch(url, {
    headers: { "If-None-Match": '"not-the-etag"' },
    signal: AbortSignal.timeout(scaled(10000)),
  });
  assert.equal(other.status, 200);
  await other.arrayBuffer();

  // The binary embeds the asset at compile time: a stale build would test an old client.
  const asset = fs.readFileSync(path.join(REPO_ROOT, "crates/switchboard/assets/switchboard.js"), "utf8");
  assert.equal(body, asset, "the server serves an old client.js: rebuild the e2e_server example");
});
