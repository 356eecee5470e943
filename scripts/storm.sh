#!/usr/bin/env bash
# The fault-storm benchmark: 1,000 conversations with and without a storm
# of 429s and 503s, side by side, and the limiter's trace. Needs tmux.
#   scripts/storm.sh              the storm
#   scripts/storm.sh --endpoints  the overhead of routing: one endpoint vs three
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
exec cargo run --release --quiet --example storm -- "$@"
