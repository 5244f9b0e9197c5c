#!/usr/bin/env bash
# Benchmarks Switchboard against a bare axum WebSocket floor and socketioxide.
#
#   scripts/bench.sh [quick|full|smoke]     (default: quick)
#
# Builds crates/switchboard-bench in release, then runs its `load` binary, which starts the
# three servers itself (next to it in target/release), drives them over 127.0.0.1 only, prints one
# table per scenario and writes every number to target/bench/results.json.
# quick: about 70 s on 2 cores; full: 10k sessions / 10k-client fan-out, longer. The cluster
# scenario starts its own redis-server (Debian: apt-get install redis-server) on a free port.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-quick}"
case "$mode" in
  quick|full|smoke) ;;
  *) echo "usage: scripts/bench.sh [quick|full|smoke]" >&2; exit 2 ;;
esac

cargo build --release -p switchboard-bench
mkdir -p target/bench
exec target/release/load "--$mode" --json target/bench/results.json
