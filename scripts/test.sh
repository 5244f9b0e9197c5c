#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, unit, integration and doc tests.
# This is the README's test command, and what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
# Each phase is announced with the minutes and seconds since the start, so that a slow phase shows.
phase() { echo "== [$((SECONDS / 60))m$((SECONDS % 60))s] $*"; }

phase "cargo fmt --check"
cargo fmt --all --check

phase "cargo clippy (all targets, warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings

phase "redis-server (the cluster tests start their own on free ports)"
if ! command -v redis-server >/dev/null; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi

phase "cargo test"
cargo test --workspace --locked

phase "cargo doc (warnings denied: broken links, missing docs)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
# rustdoc renders an intra-doc link to a dependency it did not document (`--no-deps`) as the
# literal text `[Router::nest]`, without a warning: look for such brackets in the pages.
# (The docs of blanket implementations of other crates' traits, shown on every type, have some of
# their own: `WithDispatch`, `Span`, `Action::Follow`; they are not ours to fix.)
if grep -roE '\[<code>[^<]*</code>\]' target/doc/switchboard target/doc/switchboard_redis target/doc/switchboard_client \
  | grep -vE '\[<code>(WithDispatch|Span|Action::Follow)</code>\]'; then
  echo "unresolved intra-doc links (rendered as [text]) in the pages above: link to docs.rs instead" >&2
  exit 1
fi
# The guide's links to the API documentation (docs/guide.md: `[`Name`]: ../target/doc/…`) name pages
# that exist.
for page in $(sed -n 's|^\[`[A-Za-z]*`\]: \.\./target/doc/|target/doc/|p' docs/guide.md); do
  [ -f "$page" ] || { echo "docs/guide.md links to $page, which cargo doc did not make" >&2; exit 1; }
done

phase "JavaScript client: dependencies (npm ci) and a browser (Debian's chromium)"
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
(cd client-js && npm ci --no-audit --no-fund --loglevel=error)

phase "nginx (the reverse-proxy browser tests run docs/nginx/*.conf)"
if [ ! -x /usr/sbin/nginx ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nginx >/dev/null
fi

phase "JavaScript client: build check, unit tests, browser tests against the real server"
cargo build -p switchboard --example e2e_server --locked --quiet
cargo build -p chat --locked --quiet
(cd client-js && npm test)
phase "all tests passed"
