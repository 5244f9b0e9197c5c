// A throw-away nginx for the browser tests: `startNginx({ config, upstreamPort })` runs one of the
// configurations in docs/nginx/ in front of the test server.
//
// The config's placeholders are replaced: __PORT__ (a free port on 127.0.0.1), __UPSTREAM__
// (127.0.0.1:upstreamPort) and __PREFIX__ (a fresh temporary directory that holds the config, the
// pid file, the logs and nginx's temporary files). nginx runs in the foreground (`daemon off;` in
// the config) in its own process group, as root or not; `stop()` and the test process's exit kill
// the whole group (master and workers), and a small watchdog kills it too if the test process is
// itself killed. nginx must be installed (`/usr/sbin/nginx`, or NGINX_BIN): when it is missing,
// this throws with instructions, so the test fails rather than skips (scripts/test.sh installs it).

import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { REPO_ROOT, scaled } from "./harness.mjs";

/** The nginx binary (override with NGINX_BIN). */
export const NGINX_BIN = process.env.NGINX_BIN || "/usr/sbin/nginx";
/** The tested configurations. */
export const NGINX_CONFIGS = {
  switchboard: path.join(REPO_ROOT, "docs", "nginx", "switchboard.conf"),
  noUpgrade: path.join(REPO_ROOT, "docs", "nginx", "no-upgrade.conf"),
  cluster: path.join(REPO_ROOT, "docs", "nginx", "cluster.conf"),
};

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Process groups of running nginx instances, killed when the test process exits.
const groups = new Set();
function killGroup(pgid, signal) {
  try {
    process.kill(-pgid, signal);
    return true;
  } catch {
    return false; // already gone
  }
}
process.on("exit", () => {
  for (const pgid of groups) killGroup(pgid, "SIGKILL");
});

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Resolves true once `port` accepts a TCP connection. */
function accepts(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

function readIfExists(file) {
  try {
    return fs.readFileSync(file, "utf8");
  } catch {
    return "";
  }
}

/** One attempt on one port. Rejects with `{portInUse: true}` when the port was taken meanwhile. */
async function launch(template, upstreamPorts) {
  const port = await freePort();
  const prefix = fs.mkdtempSync(path.join(os.tmpdir(), "switchboard-nginx-"));
  // As root, nginx's workers run as an unprivileged user (nobody): they must be able to reach the
  // temporary directories (which nginx creates and hands over to them) inside the prefix.
  fs.chmodSync(prefix, 0o755);
  fs.mkdirSync(path.join(prefix, "logs"));
  fs.mkdirSync(path.join(prefix, "tmp"));
  const config = template
    .replaceAll("__PORT__", String(port))
    .replaceAll("__UPSTREAM__", `127.0.0.1:${upstreamPorts[0]}`)
    .replaceAll("__UPSTREAM2__", `127.0.0.1:${upstreamPorts[1] ?? upstreamPorts[0]}`)
    .replaceAll("__PREFIX__", prefix);
  const left = /__[A-Z]+__/.exec(config);
  if (left) throw new Error(`nginx config: unknown placeholder ${left[0]}`);
  const configFile = path.join(prefix, "nginx.conf");
  fs.writeFileSync(configFile, config);
  const errorLog = path.join(prefix, "logs", "error.log");
  const accessLog = path.join(prefix, "logs", "access.log");
  const removePrefix = () => fs.rmSync(prefix, { recursive: true, force: true });

  // detached: a new session and process group, so that master and workers can be killed together.
  const child = spawn(NGINX_BIN, ["-c", configFile, "-p", prefix], {
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout.setEncoding("utf8");
  child.stderr.setEncoding("utf8");
  child.stdout.on("data", (chunk) => (output = (output + chunk).slice(-10000)));
  child.stderr.on("data", (chunk) => (output = (output + chunk).slice(-10000)));
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve(code ?? signal)));
  let exitStatus = null;
  exited.then((status) => (exitStatus = status));
  let spawnError = null;
  child.once("error", (err) => (spawnError = err));
  const pgid = child.pid;
  if (pgid !== undefined) groups.add(pgid);

  // If this process is killed outright (no exit handler runs), the watchdog's stdin closes and it
  // kills the nginx group and removes the prefix.
  let watchdog = null;
  if (pgid !== undefined) {
    const script = 'cat >/dev/null; kill -KILL "-$1" 2>/dev/null; rm -rf "$2"';
    watchdog = spawn("/bin/sh", ["-c", script, "sh", String(pgid), prefix], {
      stdio: ["pipe", "ignore", "ignore"],
    });
    watchdog.on("error", () => {});
    watchdog.stdin.on("error", () => {});
  }

  const stop = async () => {
    if (pgid !== undefined && exitStatus === null && !spawnError) {
      killGroup(pgid, "SIGTERM"); // fast shutdown: open connections are closed at once
      const gone = await Promise.race([exited.then(() => true), sleep(5000).then(() => false)]);
      if (!gone) killGroup(pgid, "SIGKILL");
      await Promise.race([exited, sleep(5000)]);
    }
    // Workers left behind by a master that died some other way.
    if (pgid !== undefined) killGroup(pgid, "SIGKILL");
    groups.delete(pgid);
    if (watchdog && watchdog.exitCode === null) watchdog.kill("SIGKILL");
    removePrefix();
  };

  const deadline = Date.now() + scaled(15000);
  for (;;) {
    if (spawnError || exitStatus !== null) {
      const why = spawnError ? spawnError.message : `exited (${exitStatus})`;
      const log = `${output}${readIfExists(errorLog)}`.trim();
      await stop();
      const error = new Error(`nginx ${why} before accepting connections on port ${port}:\n${log}`);
      error.portInUse = /Address already in use/.test(log);
      throw error;
    }
    if (await accepts(port)) break;
    if (Date.now() > deadline) {
      const log = `${output}${readIfExists(errorLog)}`.trim();
      await stop();
      throw new Error(`nginx did not accept connections on port ${port} within 15 s:\n${log}`);
    }
    await sleep(50);
  }
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    prefix,
    stop,
    /** The access log so far. */
    accessLog: () => readIfExists(accessLog),
    /** The error log so far (plus anything nginx printed). */
    errorLog: () => `${output}${readIfExists(errorLog)}`,
  };
}

/**
 * Starts nginx with `config` (a path, or one of the keys of NGINX_CONFIGS) in front of the server
 * on 127.0.0.1:`upstreamPort` (or the servers on `upstreamPorts`, for the cluster configuration).
 * Returns `{port, url, prefix, stop(), accessLog(), errorLog()}`.
 */
export async function startNginx({ config, upstreamPort, upstreamPorts = [upstreamPort] }) {
  if (!fs.existsSync(NGINX_BIN)) {
    throw new Error(
      `nginx is not installed (${NGINX_BIN} is missing). The nginx tests need it: ` +
        "`sudo apt-get install nginx` (Debian/Ubuntu), or set NGINX_BIN; scripts/test.sh installs it.",
    );
  }
  if (!upstreamPorts.every(Number.isInteger)) throw new Error("startNginx: upstreamPort is required");
  const file = NGINX_CONFIGS[config] ?? config;
  const template = fs.readFileSync(file, "utf8");
  let lastError;
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      return await launch(template, upstreamPorts);
    } catch (err) {
      lastError = err;
      if (!err.portInUse) break; // another process took the port between our check and nginx
    }
  }
  throw lastError;
}
