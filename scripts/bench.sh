#!/usr/bin/env bash
# The Docker workspace benchmark: prints the tables for the README, under
# a line saying which build and machine produced them.
#   scripts/bench.sh            full run (several minutes)
#   scripts/bench.sh --quick    smaller counts
# Needs Docker and the workspace image (scripts/build-workspace-image.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin convoy --example bench
scripts/provenance.sh
echo
exec target/release/examples/bench "$@"
