// The chat example (examples/chat) in real Chromium: three people, one per transport, in one room.
// Built by the test command first: `cargo build -p chat`.
//
// Set UPDATE_SCREENSHOT=1 to refresh docs/chat-screenshot.png (the README shows it); otherwise the
// screenshot goes to target/chat-screenshot.png.

import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";

import { chatLines, join, memberList, send, startChat } from "./chat.mjs";
import { REPO_ROOT, cleanup, launchBrowser, report, scaled, startProxy } from "./harness.mjs";
import { startNginx } from "./nginx.mjs";

const PEOPLE = [
  { nick: "민준", transport: "websocket" },
  { nick: "Ada 🚀", transport: "longpoll" },
  { nick: "Zoë", transport: "poll" },
];

test("three people, one per transport, chat in one room", async (t) => {
  const defer = cleanup(t);
  const chat = await startChat();
  defer(() => chat.stop());
  const browser = await launchBrowser();
  defer(() => browser.close());

  const pages = [];
  for (const person of PEOPLE) pages.push(await join(browser, chat.url, person));
  const [minjun, ada, zoe] = pages;

  // Presence: everyone sees everyone, on every transport.
  for (const page of pages) {
    await page.waitForFunction(() => document.querySelectorAll("#members li").length === 3);
  }
  assert.deepEqual(await memberList(ada), ["Ada 🚀 (you)", "Zoë", "민준"]);

  // Messages in turn (each waits for its own echo, so the order is defined); everyone sees the
  // same lines in the same order.
  const said = [
    [minjun, "안녕하세요! 반갑습니다 👋"],
    [ada, "Hello from long polling 🐢"],
    [zoe, "Short polling here, ça va? 🎉"],
    [minjun, "한국어와 이모지 모두 잘 됩니다 ✅"],
  ];
  for (const [page, text] of said) {
    const before = (await chatLines(page)).length;
    await send(page, text);
    await page.waitForFunction((n) => document.querySelectorAll("#lines li:not(.notice)").length > n, before);
  }
  const expected = said.map(([page, text]) => `${PEOPLE[pages.indexOf(page)].nick}: ${text}`);
  for (const page of pages) {
    await page.waitForFunction((n) => document.querySelectorAll("#lines li:not(.notice)").length >= n, expected.length);
    assert.deepEqual(await chatLines(page), expected);
  }

  // Typing indicators travel as low-priority messages.
  await ada.type("#text", "typing…", { delay: 20 });
  await minjun.waitForFunction(() => document.querySelector("#typing").textContent === "Ada 🚀 is typing…");
  await zoe.waitForFunction(() => document.querySelector("#typing").textContent === "Ada 🚀 is typing…");
  await ada.fill("#text", "");

  // Other people's text is text, never HTML.
  await send(ada, '<img src=x onerror="window.pwned=1"><b>bold?</b>');
  for (const page of pages) {
    await page.waitForFunction(() => [...document.querySelectorAll("#lines li")].some((li) => li.textContent.includes("<b>bold?</b>")));
    assert.equal(await page.evaluate(() => document.querySelectorAll("#lines img, #lines b").length), 0);
    assert.equal(await page.evaluate(() => window.pwned), undefined);
  }

  // Zoë leaves for another room: the others see her go; she comes back and gets the history.
  await zoe.click('#rooms li[data-room="rust"]');
  await zoe.waitForFunction(() => document.querySelector("#room-title").textContent === "rust");
  await minjun.waitForFunction(() => [...document.querySelectorAll("#lines li.notice")].some((li) => li.textContent === "Zoë left"));
  await minjun.waitForFunction(() => document.querySelectorAll("#members li").length === 2);
  await zoe.click('#rooms li[data-room="lobby"]');
  await zoe.waitForFunction(() => document.querySelector("#room-title").textContent === "lobby");
  await zoe.waitForFunction(() => document.querySelectorAll("#lines li.history").length >= 5);
  const history = await chatLines(zoe);
  assert.deepEqual(history.slice(0, expected.length), expected);
  await ada.waitForFunction(() => [...document.querySelectorAll("#lines li.notice")].some((li) => li.textContent === "Zoë joined"));

  // A new room by name, announced to everyone.
  await ada.fill("#room-name", "서울");
  await ada.click("#new-room button");
  await ada.waitForFunction(() => document.querySelector("#room-title").textContent === "서울");
  await minjun.waitForFunction(() => !!document.querySelector('#rooms li[data-room="서울"]'));

  // The screenshot in the README: Minjun's view, phone-width as well as desktop.
  await minjun.setViewportSize({ width: 1100, height: 640 });
  const shot = process.env.UPDATE_SCREENSHOT
    ? path.join(REPO_ROOT, "docs", "chat-screenshot.png")
    : path.join(REPO_ROOT, "target", "chat-screenshot.png");
  fs.mkdirSync(path.dirname(shot), { recursive: true });
  await minjun.screenshot({ path: shot });
  await minjun.setViewportSize({ width: 390, height: 760 });
  assert.ok(await minjun.evaluate(() => document.documentElement.scrollWidth <= 390), "no sideways scrolling on a phone");

  // Limits: an over-long message is refused with a clear message (the server says so too).
  await minjun.evaluate(() => {
    document.querySelector("#text").removeAttribute("maxlength");
  });
  await send(minjun, "가".repeat(501));
  await minjun.waitForFunction(() => document.querySelector("#problem").textContent.includes("at most 500 characters"));
  await minjun.evaluate(() => window.conn.emit("say", { text: "나".repeat(600) }));
  await minjun.waitForFunction(() => document.querySelector("#problem").textContent === "a message has at most 500 characters");

  for (const page of pages) assert.deepEqual(page.errors, []);
  report({ scenario: "chat-three-transports", screenshot: path.relative(REPO_ROOT, shot) });
});

test("the chat page is served with security headers, and works under its content security policy", async (t) => {
  // Issue 11, item 6: a CSP without 'unsafe-inline', nosniff, no framing by other sites.
  const defer = cleanup(t);
  const chat = await startChat();
  defer(() => chat.stop());
  const browser = await launchBrowser();
  defer(() => browser.close());
  const page = await browser.context.newPage();
  page.setDefaultTimeout(scaled(20000));
  const violations = [];
  page.on("console", (message) => {
    if (/Content Security Policy/i.test(message.text())) violations.push(message.text());
  });
  const response = await page.goto(`${chat.url}/`);
  const headers = response.headers();
  const csp = headers["content-security-policy"] || "";
  assert.match(csp, /default-src 'self'/);
  assert.match(csp, /script-src 'self'(;|$)/);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  assert.equal(headers["x-content-type-options"], "nosniff");
  assert.equal(headers["x-frame-options"], "DENY");
  // The page's own scripts, styles and WebSocket are allowed: it logs in and talks.
  await page.fill("#nick", "보안 🛡️");
  await page.click("#login button");
  await page.waitForFunction(() => document.querySelector("#badge").textContent.replace(/\s+/g, " ").trim() === "open · websocket");
  await send(page, "CSP 아래에서도 됩니다 ✅");
  await page.waitForFunction(() => [...document.querySelectorAll("#lines li")].some((li) => li.textContent.includes("CSP 아래에서도 됩니다 ✅")));
  // style.css applied (body is a flex column there; the browser's default is block).
  assert.equal(await page.evaluate(() => getComputedStyle(document.body).display), "flex");
  assert.deepEqual(violations, []);
});

test("a nickname that breaks the rules is refused with a clear message", async (t) => {
  const defer = cleanup(t);
  const chat = await startChat();
  defer(() => chat.stop());
  const browser = await launchBrowser();
  defer(() => browser.close());
  const page = await browser.context.newPage();
  await page.goto(`${chat.url}/`);
  await page.evaluate(() => document.querySelector("#nick").removeAttribute("maxlength"));
  await page.fill("#nick", "x".repeat(30));
  await page.click("#login button");
  await page.waitForFunction(() => document.querySelector("#login-problem").textContent.includes("1 to 24 characters"));
  assert.equal(await page.evaluate(() => document.querySelector("#chat").hidden), true);
});

test("through nginx without WebSocket upgrade headers, the chat falls back and says so", async (t) => {
  const defer = cleanup(t);
  const chat = await startChat();
  defer(() => chat.stop());
  const nginx = await startNginx({ config: "noUpgrade", upstreamPort: Number(new URL(chat.url).port) });
  defer(() => nginx.stop());
  const browser = await launchBrowser();
  defer(() => browser.close());
  const page = await browser.context.newPage();
  page.setDefaultTimeout(scaled(20000));
  const started = Date.now();
  // No transport forced: the client tries WebSocket, nginx drops the upgrade, it falls back to SSE.
  await page.goto(`${nginx.url}/`);
  await page.fill("#nick", "프록시 뒤 🧱");
  await page.click("#login button");
  await page.waitForFunction(() => document.querySelector("#badge").textContent.replace(/\s+/g, " ").trim() === "open · sse");
  await send(page, "nginx 뒤에서도 잘 됩니다 ✅");
  await page.waitForFunction(() =>
    [...document.querySelectorAll("#lines li")].some((li) => li.textContent.includes("nginx 뒤에서도 잘 됩니다 ✅")),
  );
  report({ scenario: "chat-behind-nginx-without-upgrade", transport: "sse", ownEchoMs: Date.now() - started });
});

test("through a proxy that kills sockets after 1 s, chat lines arrive within a second and the badge tells the truth", async (t) => {
  // Issue 9: a line took 21-22 s to reach the other person while the sender's badge read
  // "reconnecting · websocket" (sends waited for the first long poll of the resume).
  const defer = cleanup(t);
  const chat = await startChat();
  defer(() => chat.stop());
  const proxy = await startProxy(Number(new URL(chat.url).port), "kill-ws-after-1s");
  defer(() => proxy.close());
  const browser = await launchBrowser();
  defer(() => browser.close());
  const ada = await join(browser, chat.url, { nick: "Ada", transport: "websocket" });
  const page = await browser.context.newPage();
  page.setDefaultTimeout(scaled(20000));
  await page.goto(`${proxy.url}/`);
  // Every badge text the sender's page shows, with when it showed it.
  await page.evaluate(() => {
    window.badges = [];
    const badge = document.querySelector("#badge");
    const note = () => window.badges.push({ text: badge.textContent.replace(/\s+/g, " ").trim(), t: performance.now() });
    new MutationObserver(note).observe(badge, { subtree: true, childList: true, characterData: true });
  });
  await page.fill("#nick", "민준 🔌");
  await page.click("#login button");
  await page.waitForFunction(() => document.querySelector("#badge").textContent.replace(/\s+/g, " ").trim() === "open · sse");
  // One line every 3 s on a quiet server; each must reach Ada within a second or so.
  const delays = [];
  for (let i = 0; i < 4; i++) {
    const text = `줄 ${i}: 소켓이 죽어도 바로 갑니다 ⚡`;
    const sentAt = Date.now();
    await send(page, text);
    await ada.waitForFunction(
      (text) => [...document.querySelectorAll("#lines li")].some((li) => li.textContent.includes(text)),
      text,
      { timeout: scaled(30000) },
    );
    delays.push(Date.now() - sentAt);
    await new Promise((wake) => setTimeout(wake, 3000));
  }
  const badges = await page.evaluate(() => {
    // Collapse repeats (the badge's two spans change one after the other).
    const seen = [];
    for (const b of window.badges) if (seen.at(-1)?.text !== b.text) seen.push(b);
    return seen.map((b, i) => ({ text: b.text, ms: Math.round((seen[i + 1]?.t ?? performance.now()) - b.t) }));
  });
  report({ scenario: "chat-behind-socket-killer", lineDelaysMs: delays, badges, wsKilled: proxy.stats.wsKilled });
  assert.ok(proxy.stats.wsKilled >= 1, "the proxy killed the sender's WebSocket");
  assert.ok(Math.max(...delays) <= scaled(2000), `chat lines took ${delays.join(", ")} ms to reach the other person`);
  // "reconnecting · websocket" may show while a WebSocket is really being tried (a moment), never
  // for the time a long poll is held.
  const stale = badges.filter((b) => b.text === "reconnecting · websocket" && b.ms > scaled(1000));
  assert.deepEqual(stale, [], `the badge read "reconnecting · websocket" for long: ${JSON.stringify(badges)}`);
  assert.deepEqual(page.errors ?? [], []);
});
