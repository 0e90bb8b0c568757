#!/usr/bin/env bash
# `make image-base`: a local Debian bookworm base image with Python 3.11 (no registry needed),
# made with mmdebstrap from the Debian mirror and imported into podman as $BASE_IMAGE.
# Then: make image PYTHON_IMAGE=$BASE_IMAGE (what `make image` does by default with podman).
set -euo pipefail
BASE_IMAGE="${BASE_IMAGE:-localhost/moderation-base:bookworm}"
SUITE="${SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$(cd "$(dirname "$0")" && pwd)/containers.conf}"
for tool in mmdebstrap podman runc; do
  command -v "$tool" >/dev/null || { echo "image-base: $tool missing (apt-get install mmdebstrap podman runc)"; exit 2; }
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
# minbase + what the Dockerfile's cpu base needs: python3 and venv (whose ensurepip brings pip;
# the python3-pip package would add perl and ~60 MB), tini, CA certificates. No manuals,
# translations or docs (copyright files stay); apt lists and caches are dropped.
mmdebstrap --variant=minbase --quiet \
  --include=python3,python3-venv,ca-certificates,tini \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
  "$SUITE" "$work/rootfs.tar" ${MIRROR:+"$MIRROR"}
podman import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
  "$work/rootfs.tar" "$BASE_IMAGE" >/dev/null
echo "image-base: $BASE_IMAGE ($(podman image inspect --format '{{.Size}}' "$BASE_IMAGE") bytes) in $(( $(date +%s) - start )) s"
