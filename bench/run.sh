#!/usr/bin/env bash
# Runs the standard benchmark set and rewrites the results in BENCHMARKS.md.
# Usage: bash bench/run.sh            (about 3-4 minutes on a 2-core machine)
# Each scenario starts its own release server with a temporary data dir.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
bin=target/release/danmaku
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# name | arguments to `danmaku bench`
scenarios=(
  "fanout-10k|fanout --viewers 10000 --senders 4 --rate 300 --duration 20"
  "fanout-1k|fanout --viewers 1000 --senders 4 --rate 100 --duration 20"
  "rooms|rooms --rooms 2000 --viewers-per-room 5 --rate-per-room 2 --duration 20"
  "ingest|ingest --concurrency 64 --duration 10"
  "connect|connect --connections 19000"
)
for entry in "${scenarios[@]}"; do
  name=${entry%%|*}
  args=${entry#*|}
  echo "== $name: danmaku bench $args" >&2
  # shellcheck disable=SC2086
  "$bin" bench --json $args > "$out/$name.json"
  printf '%s\n' "$args" > "$out/$name.args"
  # Let sockets in TIME_WAIT and the previous server's memory go.
  sleep 2
done
python3 bench/render.py "$out" BENCHMARKS.md
echo "BENCHMARKS.md updated" >&2
