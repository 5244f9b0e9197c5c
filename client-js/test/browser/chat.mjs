// The chat example (examples/chat) for the browser tests: start it (alone or as a node of a
// cluster, with a redis-server of the test's own), and drive its page. Built by the test command
// first: `cargo build -p chat`.

import { spawn } from "node:child_process";
import net from "node:net";
import path from "node:path";

import { REPO_ROOT, scaled } from "./harness.mjs";
import { freePort } from "./nginx.mjs";

const CHAT_BIN = path.join(
  process.env.CARGO_TARGET_DIR ? path.resolve(REPO_ROOT, process.env.CARGO_TARGET_DIR) : path.join(REPO_ROOT, "target"),
  "debug",
  "chat",
);

/**
 * Starts the chat on `addr` (an ephemeral port by default), with more command-line `args` (for
 * example `["--redis", url]`); resolves `{url, port, stop(), terminate()}` once it listens.
 * `stop()` kills it (SIGKILL), `terminate()` asks it to shut down (SIGTERM) and waits.
 */
export function startChat({ addr = "127.0.0.1:0", args = [] } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(CHAT_BIN, ["--addr", addr, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    child.stdout.setEncoding("utf8");
    child.stderr.setEncoding("utf8");
    let output = "";
    const timer = setTimeout(() => reject(new Error(`chat did not start:\n${output}`)), scaled(30000));
    const ended = (signal) =>
      new Promise((done) => {
        if (child.exitCode !== null || child.signalCode !== null) return done();
        child.once("exit", done);
        child.kill(signal);
      });
    const onData = (chunk) => {
      output += chunk;
      const found = /chat on (http:\/\/127\.0\.0\.1:(\d+))/.exec(output.replace(/\x1b\[[0-9;]*m/g, ""));
      if (found) {
        clearTimeout(timer);
        child.stdout.off("data", onData);
        child.stderr.off("data", onData);
        child.stdout.resume();
        child.stderr.resume();
        resolve({ url: found[1], port: Number(found[2]), stop: () => ended("SIGKILL"), terminate: () => ended("SIGTERM") });
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.once("error", reject);
    process.on("exit", () => child.kill("SIGKILL"));
  });
}

/** Resolves true once a Redis answers PING on `port`. */
function pong(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.once("connect", () => socket.write("PING\r\n"));
    socket.once("data", (data) => {
      socket.destroy();
      resolve(String(data).startsWith("+PONG"));
    });
    socket.once("error", () => resolve(false));
  });
}

/**
 * Starts a redis-server of the test's own on a free port, with no persistence; resolves
 * `{url, stop()}` once it answers. (scripts/test.sh installs Debian's redis-server.)
 */
export async function startRedis() {
  const port = await freePort();
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
  });
  let failed = null;
  child.once("error", (err) => (failed = err));
  process.on("exit", () => child.kill("SIGKILL"));
  const deadline = Date.now() + scaled(10000);
  while (!(await pong(port))) {
    if (failed) throw new Error(`redis-server did not start (is it installed? scripts/test.sh installs it): ${failed.message}`);
    if (Date.now() > deadline) throw new Error(`redis-server did not answer on port ${port}`);
    await new Promise((wake) => setTimeout(wake, 20));
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    stop: () =>
      new Promise((done) => {
        if (child.exitCode !== null) return done();
        child.once("exit", done);
        child.kill("SIGKILL");
      }),
  };
}

/** Opens the chat page at `url`, forced to `transport`, and logs in as `nick`. */
export async function join(browser, url, { nick, transport }) {
  const page = await browser.context.newPage();
  page.setDefaultTimeout(scaled(20000));
  page.errors = [];
  page.on("pageerror", (err) => page.errors.push(err.message));
  await page.goto(`${url}/?transport=${transport}`);
  await page.fill("#nick", nick);
  await page.click("#login button");
  await page.waitForFunction(
    (expected) => document.querySelector("#badge").textContent.replace(/\s+/g, " ").trim() === `open · ${expected}`,
    transport,
  );
  return page;
}

/** The chat lines a page shows, as `nick: text`, notices left out. */
export const chatLines = (page) =>
  page.$$eval("#lines li:not(.notice)", (items) =>
    items.map((li) => `${li.querySelector(".nick").textContent}: ${li.childNodes[1].textContent}`),
  );

/** The member list a page shows. */
export const memberList = (page) => page.$$eval("#members li", (items) => items.map((li) => li.textContent));

/** Says `text` from `page`. */
export async function send(page, text) {
  await page.fill("#text", text);
  await page.click("#say button");
}
