// The chat as a cluster in real Chromium: two chat nodes on one Redis behind nginx round-robin
// (docs/nginx/cluster.conf: every request and every socket to the next node, no stickiness), three
// pages on three transports. Issue 10: same order on every page, pages moving between nodes, and a
// node replaced (SIGTERM, then a fresh one on its port) while they talk, with no reset.

import { test } from "node:test";
import assert from "node:assert/strict";

import { chatLines, join, memberList, send, startChat, startRedis } from "./chat.mjs";
import { cleanup, launchBrowser, report, scaled } from "./harness.mjs";
import { startNginx } from "./nginx.mjs";

const PEOPLE = [
  { nick: "민준", transport: "websocket" },
  { nick: "Ada 🚀", transport: "longpoll" },
  { nick: "Zoë", transport: "poll" },
];

/** Every page's `reset` events and its session id, to prove nobody started over. */
async function watchResets(page) {
  await page.evaluate(() => {
    window.resets = 0;
    window.conn.on("reset", () => window.resets++);
  });
}

test("the chat on two nodes behind round-robin nginx: one order everywhere, a node replaced, nobody reset", async (t) => {
  const defer = cleanup(t);
  const redis = await startRedis();
  defer(() => redis.stop());
  const nodes = [];
  for (let i = 0; i < 2; i++) nodes.push(await startChat({ args: ["--redis", redis.url] }));
  defer(() => Promise.all(nodes.map((node) => node.stop())));
  const nginx = await startNginx({ config: "cluster", upstreamPorts: nodes.map((node) => node.port) });
  defer(() => nginx.stop());
  const browser = await launchBrowser();
  defer(() => browser.close());

  const pages = [];
  for (const person of PEOPLE) pages.push(await join(browser, nginx.url, person));
  for (const page of pages) await watchResets(page);
  const sids = await Promise.all(pages.map((page) => page.evaluate(() => window.conn._sid)));

  // Presence across the nodes: everyone sees everyone.
  for (const page of pages) await page.waitForFunction(() => document.querySelectorAll("#members li").length === 3);
  assert.deepEqual(await memberList(pages[1]), ["Ada 🚀 (you)", "Zoë", "민준"]);

  // Lines in turn, each after its own echo; the same lines in the same order on every page.
  const said = [];
  const talk = async (round) => {
    for (const [i, page] of pages.entries()) {
      const text = `${round}: ${["안녕하세요 👋", "hello from long polling 🐢", "ça va? 🎉"][i]}`;
      const before = (await chatLines(page)).length;
      await send(page, text);
      await page.waitForFunction((n) => document.querySelectorAll("#lines li:not(.notice)").length > n, before);
      said.push(`${PEOPLE[i].nick}: ${text}`);
    }
  };
  await talk("첫째");
  await talk("둘째");

  // Replace node 0 while they talk: SIGTERM (it hands its sessions to node 1), then a fresh node
  // on the same port, which nginx sends requests to again.
  const port = nodes[0].port;
  const terminated = nodes[0].terminate();
  await talk("셋째");
  await terminated;
  nodes[0] = await startChat({ addr: `127.0.0.1:${port}`, args: ["--redis", redis.url] });
  await talk("넷째");
  // And node 1.
  const port1 = nodes[1].port;
  await nodes[1].terminate();
  nodes[1] = await startChat({ addr: `127.0.0.1:${port1}`, args: ["--redis", redis.url] });
  await talk("다섯째");

  for (const page of pages) {
    await page.waitForFunction((n) => document.querySelectorAll("#lines li:not(.notice)").length >= n, said.length, {
      timeout: scaled(30000),
    });
    assert.deepEqual(await chatLines(page), said);
  }
  // Nobody started over: same sessions, no reset, and presence still lists all three.
  assert.deepEqual(await Promise.all(pages.map((page) => page.evaluate(() => window.conn._sid))), sids);
  assert.deepEqual(await Promise.all(pages.map((page) => page.evaluate(() => window.resets))), [0, 0, 0]);
  // Somebody new sees the whole history and all three, whichever node it lands on.
  const newcomer = await join(browser, nginx.url, { nick: "새 사람", transport: "websocket" });
  await newcomer.waitForFunction(() => document.querySelectorAll("#members li").length === 4);
  await newcomer.waitForFunction((n) => document.querySelectorAll("#lines li.history").length >= n, said.length);
  assert.deepEqual((await chatLines(newcomer)).slice(0, said.length), said);

  // The pages moved between the nodes: nginx's log names the node of every request.
  const upstreams = new Set(
    nginx
      .accessLog()
      .split("\n")
      .filter((line) => line.includes("/realtime/"))
      .map((line) => line.trim().split(" ").at(-1)),
  );
  assert.ok(upstreams.size >= 2, `requests reached ${[...upstreams].join(", ")}`);
  const transports = await Promise.all(pages.map((page) => page.evaluate(() => window.conn.transport)));
  for (const page of [...pages, newcomer]) assert.deepEqual(page.errors, []);
  report({ scenario: "chat-cluster-round-robin", lines: said.length, transports, upstreams: [...upstreams] });
});
