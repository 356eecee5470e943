#!/usr/bin/env bash
# The Docker workspace benchmark: prints the tables for the README, under
# a line saying which build and machine produced them. The same
# conversations run through the helper with workspace.isolation = "user"
# and "none", and through one docker exec per call, side by side.
#   scripts/bench.sh              full run (about 15 minutes on 2 cores)
#   scripts/bench.sh --quick      smaller counts
#   scripts/bench.sh --overhead   the helper's per-call overhead, 5 runs per mode
#   scripts/bench.sh --environments        task environments: files, verify, a 50 MB seed
#   scripts/bench.sh --environments-quick  the same with 200 conversations at 64 workers
#   scripts/bench.sh --gateway     model calls through the gateway (external agents), 64 and 512 at once
#   scripts/bench.sh --gateway-quick       the same with 16 and 64
# Needs Docker and the workspace image (scripts/build-workspace-image.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin convoy --example bench --example gateway_client
scripts/provenance.sh
echo
exec target/release/examples/bench "$@"
