#!/usr/bin/env bash
# Conversations/s of the quickstart job (200 scripted 4-turn conversations,
# local workspace) at several worker counts, measured in one run.
# Usage: scripts/bench-local.sh [WORKERS...]   (default: 1 16 128)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/convoy
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
printf '| workers | tasks | wall s | conversations/s | tool calls/s |\n|---:|---:|---:|---:|---:|\n'
for w in "${@:-1 16 128}"; do
  for n in $w; do
    start=$(date +%s.%N)
    "$bin" run jobs/smoke.toml --workers "$n" --out "$out/w$n" >/dev/null 2>&1
    end=$(date +%s.%N)
    python3 - "$out/w$n/summary.json" "$start" "$end" "$n" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
wall = float(sys.argv[3]) - float(sys.argv[2])
calls = s["steps"] - s["done"]  # every conversation's last turn is `finish`
print(f"| {sys.argv[4]} | {s['done']} | {wall:.2f} | {s['conversations_per_s']:.1f} | {calls / s['duration_s']:.0f} |")
PY
  done
done
