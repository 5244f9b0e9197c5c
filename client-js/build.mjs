// Builds the client: an ES module (readable) and a script-tag build (minified, global
// `Switchboard`), which the Rust server embeds and serves at `<mount>/client.js`.
//
//   node build.mjs          write dist/ and crates/switchboard/assets/switchboard.js
//   node build.mjs --check  fail if those files differ from a fresh build (they are committed)

import { build } from "esbuild";
import { minify } from "terser";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const banner = "/* Switchboard client " + JSON.parse(readFileSync(join(here, "package.json"))).version + " | MIT OR Apache-2.0 */";
// `absWorkingDir`: the ES module names its source files relative to it, so the output is the same
// from whatever directory the build runs.
const common = { absWorkingDir: here, entryPoints: [join(here, "src/index.js")], bundle: true, write: false, target: "es2022", banner: { js: banner } };

const outputs = {
  "dist/switchboard.mjs": { ...common, format: "esm" },
  "dist/switchboard.js": {
    ...common,
    entryPoints: [join(here, "src/global.js")],
    format: "iife",
    minify: true,
    // Internal members all start with `_`; shorten them in the minified build.
    mangleProps: /^_/,
  },
};

const built = {};
for (const [file, options] of Object.entries(outputs)) {
  const result = await build(options);
  built[file] = result.outputFiles[0].text;
}
// esbuild bundles and shortens the internal names; terser's compressor then saves about 150 bytes
// of min+gzip more (safe transforms only; the banner comment is kept).
const terse = await minify(built["dist/switchboard.js"], {
  ecma: 2020,
  compress: { ecma: 2020, passes: 3 },
  mangle: true,
  format: { comments: /^\*? Switchboard client/ },
});
built["dist/switchboard.js"] = terse.code + "\n";
built["../crates/switchboard/assets/switchboard.js"] = built["dist/switchboard.js"];

const check = process.argv.includes("--check");
let stale = [];
for (const [file, text] of Object.entries(built)) {
  const path = join(here, file);
  if (check) {
    let current = null;
    try {
      current = readFileSync(path, "utf8");
    } catch {}
    if (current !== text) stale.push(file);
  } else {
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, text);
  }
}

const min = Buffer.from(built["dist/switchboard.js"]);
console.log(`switchboard.js: ${min.length} bytes minified, ${gzipSync(min, { level: 9 }).length} bytes min+gzip`);
if (stale.length) {
  console.error(`stale build output (run \`npm run build\` in client-js/ and commit): ${stale.join(", ")}`);
  process.exit(1);
}
