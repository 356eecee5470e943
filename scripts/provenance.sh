#!/usr/bin/env bash
# One line saying which build and machine produced a benchmark's figures,
# printed above its tables: the commit of the release build (with
# "+changes" if src/ differs from it), cores, CPU model, Docker version
# and storage driver (fuse-overlayfs makes user isolation dearer: see the
# README's "Performance (Docker workspace)"), and the load average when it
# started (other work on the machine slows every figure down).
set -euo pipefail
cd "$(dirname "$0")/.."
commit=$(git rev-parse --short HEAD)
git diff --quiet HEAD -- src Cargo.toml Cargo.lock || commit="$commit+changes"
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
docker=$(docker version --format '{{.Server.Version}}' 2>/dev/null || echo "unreachable")
driver=$(docker info --format '{{.Driver}}' 2>/dev/null || echo "unknown")
load=$(cut -d ' ' -f 1-3 /proc/loadavg)
echo "\`cargo build --release\` at $commit; $(nproc) cores ($cpu); Docker $docker (storage driver $driver); load average $load at the start"
