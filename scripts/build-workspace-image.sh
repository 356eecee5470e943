#!/usr/bin/env bash
# Builds the default workspace image `convoy-workspace:bookworm` without a
# container registry: debootstrap a minimal Debian bookworm from the mirror
# this machine's apt already uses, then `docker import` the tree.
#
# Usage: scripts/build-workspace-image.sh [IMAGE[:TAG]]
#   MIRROR=http://...   overrides the mirror read from /etc/apt
#   FORCE=1             rebuilds even if the image exists
set -euo pipefail

image=${1:-convoy-workspace:bookworm}
packages=bash,tmux,procps,coreutils,git,python3,ca-certificates,locales

# Bump when the image's content changes: an older image is rebuilt.
version=2
have=$(docker image inspect -f '{{ index .Config.Labels "convoy.image-version" }}' "$image" 2>/dev/null || true)
if [ -z "${FORCE:-}" ] && [ "$have" = "$version" ]; then
  echo "image $image (version $version) already exists (FORCE=1 to rebuild)"
  exit 0
fi

# The mirror: the first Debian URI in the machine's apt sources (deb822
# `URIs:` stanzas whose suite is bookworm, or one-line `deb URL bookworm`).
find_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '
      /^URIs:/ { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm") ok = 1 }
      /^$/ { if (ok && uri != "") { print uri; exit } uri = ""; ok = 0 }
      END { if (ok && uri != "") print uri }
    ' "$f" | head -n 1
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' "$f"
  done
}
mirror=${MIRROR:-$(find_mirror | head -n 1)}
if [ -z "$mirror" ]; then
  echo "error: no bookworm mirror found in /etc/apt/sources.list*; set MIRROR=http://..." >&2
  exit 1
fi

# debootstrap is the one build tool this needs beyond Docker. As root on a
# Debian-family machine, install it (what `cargo test` on a fresh machine
# relies on); otherwise say what to install.
if ! command -v debootstrap >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing debootstrap (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  else
    echo "error: debootstrap is not installed (apt-get install debootstrap)" >&2
    exit 1
  fi
fi

root=$(mktemp -d /tmp/convoy-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT

echo "debootstrap bookworm from $mirror into $root"
debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror"
# C.UTF-8 into the locale archive: one mapped file per process instead of
# twelve. On Docker's fuse-overlayfs storage driver every file a container
# process holds open costs the daemon a file descriptor, so this roughly
# triples the sessions one container can hold.
chroot "$root" localedef -i C -c -f UTF-8 C.UTF-8
# Keep the image small: package lists and caches are not needed at run time.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
mkdir -p "$root/workspace"

tar -C "$root" -c . | docker import \
  -c 'CMD ["/bin/bash"]' \
  -c 'WORKDIR /workspace' \
  -c 'ENV LANG=C.UTF-8' \
  -c "LABEL convoy.image-version=$version" \
  - "$image"
echo "built $image"
