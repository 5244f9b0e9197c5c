// The small parts: frames, base64, backoff, transport memory.

import { test } from "node:test";
import assert from "node:assert/strict";

import { backoff } from "../../src/backoff.js";
import { encodeMessage, fromBase64, payloadOf, toBase64 } from "../../src/frames.js";
import { TransportMemory } from "../../src/memory.js";
import { memoryStorage } from "./fakes.mjs";

test("message frames carry text, JSON and binary, with sizes as the server counts them", () => {
  assert.deepEqual(encodeMessage(1, "안녕"), { text: '{"t":"m","s":1,"d":"안녕"}', size: 8 });
  assert.deepEqual(encodeMessage(2, { a: 1 }, "이벤트"), { text: '{"t":"m","s":2,"e":"이벤트","d":{"a":1}}', size: 7 });
  assert.deepEqual(encodeMessage(3, new Uint8Array([0, 1, 255])), { text: '{"t":"m","s":3,"b":"AAH/"}', size: 3 });
  assert.equal(encodeMessage(4, new Uint16Array([1]).buffer).size, 2);
  assert.equal(encodeMessage(5, new DataView(new ArrayBuffer(8), 2, 4)).size, 4);
  assert.equal(JSON.parse(encodeMessage(6, undefined).text).d, null);
  assert.equal(JSON.parse(encodeMessage(7, () => 1).text).d, null);
});

test("base64 round-trips every byte value and large buffers", () => {
  const bytes = new Uint8Array(100000).map((_, i) => (i * 7) % 256);
  assert.deepEqual(fromBase64(toBase64(bytes)), bytes);
  assert.equal(toBase64(new Uint8Array([0xff, 0xfe, 0xfd])), "//79");
  assert.deepEqual(payloadOf({ b: "3q2+7w==" }), new Uint8Array([0xde, 0xad, 0xbe, 0xef]));
  assert.equal(payloadOf({ d: "👋" }), "👋");
});

test("backoff doubles up to the cap, with jitter below the base", () => {
  const options = { min: 100, max: 1000, jitter: 0.5 };
  assert.equal(backoff(0, options, () => 0), 100);
  assert.equal(backoff(3, options, () => 0), 800);
  assert.equal(backoff(10, options, () => 0), 1000);
  assert.equal(backoff(1000, options, () => 0), 1000);
  assert.equal(backoff(3, options, () => 1), 400);
  for (let i = 0; i < 100; i++) {
    const delay = backoff(2, options);
    assert.ok(delay >= 200 && delay <= 400, String(delay));
  }
});

test("a remembered failure lasts its time, then is forgotten", () => {
  let now = 1000;
  const storage = memoryStorage();
  const memory = new TransportMemory(storage, "k", 500, () => now);
  assert.equal(memory.failed("websocket"), false);
  memory.remember("websocket");
  assert.equal(memory.failed("websocket"), true);
  // Another page load (another instance) sees it.
  assert.equal(new TransportMemory(storage, "k", 500, () => now).failed("websocket"), true);
  now += 501;
  assert.equal(memory.failed("websocket"), false);
  memory.remember("longpoll");
  memory.forget("longpoll");
  assert.equal(memory.failed("longpoll"), false);
  // No storage, or broken storage: nothing is remembered, nothing throws.
  const none = new TransportMemory(null, "k", 500);
  none.remember("websocket");
  assert.equal(none.failed("websocket"), false);
  storage.setItem("k", "{not json");
  assert.equal(memory.failed("websocket"), false);
});
