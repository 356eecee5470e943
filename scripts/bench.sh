#!/usr/bin/env bash
# The Docker workspace benchmark: prints the tables for the README.
#   scripts/bench.sh            full run (several minutes)
#   scripts/bench.sh --quick    smaller counts
# Needs Docker and the workspace image (scripts/build-workspace-image.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
exec cargo run --release --quiet --example bench -- "$@"
