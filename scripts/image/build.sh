#!/usr/bin/env bash
# `make image`: the CPU image (VARIANT=cpu: ONNX Runtime and OpenVINO, no torch) with whichever engine is
# present (docker when its daemon answers, else podman), tagged $IMAGE, with the OCI version/revision labels; writes the build time to
# image-results/build.json for `make image-check`.
#   IMAGE             tag (default localhost/moderation-worker:cpu)
#   ENGINE            docker | podman (default: detected)
#   VARIANT           cpu (default: ONNX Runtime + OpenVINO, no torch) | cpu-torch | cuda (Dockerfile)
#   PYTHON_IMAGE      the base; default with podman: localhost/moderation-base:bookworm, made by
#                     scripts/image/base.sh (`make image-base`) when missing; with docker the
#                     Dockerfile's default (python:3.12-slim-bookworm, from a registry)
#   TORCH_INDEX_URL   torch's index, for VARIANT=cpu-torch (default: the PyTorch CPU index)
#   TORCH_WHEELHOUSE  a directory holding torch-$TORCH_VERSION-*.whl (default: pip's configured
#                     find-links directory, when it has one); only that wheel is handed over
#   PIP_CA_BUNDLE     an extra CA bundle for pip in the build (a secret, not stored in the image);
#                     default: pip's own configured bundle (PIP_CERT, or `cert` in pip's
#                     config), so a host behind a TLS-intercepting proxy builds as it installs
set -euo pipefail
cd "$(dirname "$0")/../.."
here="$(pwd)"
IMAGE="${IMAGE:-localhost/moderation-worker:cpu}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/scripts/image/containers.conf}"
if [ -z "${ENGINE:-}" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker
  elif command -v podman >/dev/null; then ENGINE=podman
  else echo "image: neither a Docker engine nor podman (apt-get install podman runc)"; exit 2; fi
fi
torch_version="$(sed -n 's/^TORCH_SPEC ?= torch==\([0-9.]*\).*/\1/p' Makefile)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if ! git diff --quiet HEAD -- 2>/dev/null; then revision="$revision-dirty"; fi
args=(build --build-arg "VARIANT=${VARIANT:-cpu}" --build-arg "TORCH_VERSION=$torch_version"
      --build-arg "VERSION=$version" --build-arg "REVISION=$revision" -t "$IMAGE")
[ "$ENGINE" = podman ] && args+=(--format docker)   # else HEALTHCHECK dropped, SHELL ignored
if [ -z "${PYTHON_IMAGE:-}" ] && [ "$ENGINE" = podman ]; then
  # podman here means no registry is assumed: the local base, made once by image-base
  PYTHON_IMAGE=localhost/moderation-base:bookworm
  podman image exists "$PYTHON_IMAGE" || BASE_IMAGE="$PYTHON_IMAGE" bash scripts/image/base.sh
fi
[ -n "${PYTHON_IMAGE:-}" ] && args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
[ -n "${TORCH_INDEX_URL:-}" ] && args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# pip's own configuration (files and PIP_* variables), as `pip config list` shows it
pip_setting() {
  command -v pip3 >/dev/null || return 0
  pip3 config list 2>/dev/null | sed -n "s/^[^=]*\.$1='\([^' ]*\).*/\1/p" | head -1
}
if [ -z "${TORCH_WHEELHOUSE:-}" ]; then TORCH_WHEELHOUSE="$(pip_setting find-links)"; fi
mkdir -p "$work/wheelhouse"
if [ -n "${TORCH_WHEELHOUSE:-}" ]; then
  for wheel in "$TORCH_WHEELHOUSE"/torch-"$torch_version"*.whl; do
    [ -e "$wheel" ] && cp "$wheel" "$work/wheelhouse/"
  done
fi
if compgen -G "$work/wheelhouse/*.whl" >/dev/null; then
  echo "image: torch from the wheelhouse: $(cd "$work/wheelhouse" && ls)"
  args+=(--build-context "wheelhouse=$work/wheelhouse")
fi
# The secret is always handed over (empty when there is no extra CA): buildah refuses a
# missing one; the Dockerfile only uses it when it is not empty.
if [ -z "${PIP_CA_BUNDLE:-}" ]; then
  PIP_CA_BUNDLE="${PIP_CERT:-$(pip_setting cert)}"
fi
if [ -n "${PIP_CA_BUNDLE:-}" ] && [ -f "$PIP_CA_BUNDLE" ]; then
  echo "image: extra CA for pip (secret pip_ca): $PIP_CA_BUNDLE"
  cp "$PIP_CA_BUNDLE" "$work/pip_ca.pem"
else : > "$work/pip_ca.pem"; fi
args+=(--secret "id=pip_ca,src=$work/pip_ca.pem")
mkdir -p image-results
echo "image: $ENGINE ${args[*]} ."
previous="$("$ENGINE" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
start=$(date +%s)
"$ENGINE" "${args[@]}" . 2>&1 | tee image-results/build.log
seconds=$(( $(date +%s) - start ))
# The image this tag named before is replaced: drop it (1.3 GB each), unless something uses it.
current="$("$ENGINE" image inspect --format '{{.Id}}' "$IMAGE")"
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  "$ENGINE" rmi "$previous" >/dev/null 2>&1 || true
fi
printf '{"engine": "%s", "image": "%s", "python_image": "%s", "build_seconds": %d, "revision": "%s", "version": "%s"}\n' \
  "$ENGINE" "$IMAGE" "${PYTHON_IMAGE:-default}" "$seconds" "$revision" "$version" > image-results/build.json
echo "image: built $IMAGE in $seconds s"
