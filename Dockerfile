# syntax=docker/dockerfile:1
#
# Streaming moderation worker image.
#
#   docker build -t moderation-worker:cuda .                          # default: CUDA runtime
#   docker build --build-arg VARIANT=cpu -t moderation-worker:cpu .   # CPU-only, much smaller
#
# The bundled default model (worker/default_model/, package data) is baked in; another model can
# be mounted read-only and selected with MODERATION_MODEL=/models/<dir>.
# The image runs as a non-root user (uid 10001) and works with a read-only root filesystem:
# everything it writes goes to /tmp (mount an emptyDir there in Kubernetes).

ARG VARIANT=cuda
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04

# ---------------------------------------------------------------- base images, one per variant
FROM ${PYTHON_IMAGE} AS base-cpu
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini ca-certificates \
 && rm -rf /var/lib/apt/lists/*

FROM ${CUDA_IMAGE} AS base-cuda
# Ubuntu 24.04 ships Python 3.12; torch's CUDA wheels bring their own CUDA user-space libraries,
# the base image provides the matching runtime layout and NVIDIA container-toolkit env.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv tini ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------- common base
# hadolint ignore=DL3006
FROM base-${VARIANT} AS base
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# ---------------------------------------------------------------- builder: venv with torch + app
FROM base AS builder
ARG VARIANT
# Same torch as the tests run with (TORCH_SPEC in the Makefile; tests/deploy checks it).
ARG TORCH_VERSION=2.13.0
# Empty: cpu -> the PyTorch CPU wheel index (no CUDA libraries, a much smaller image);
# cuda -> PyPI, whose Linux torch wheels are CUDA builds bundling their CUDA libraries.
# Set it to e.g. https://download.pytorch.org/whl/cu128 for another CUDA version.
ARG TORCH_INDEX_URL=""
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python3 -m venv "$VIRTUAL_ENV"
RUN index="$TORCH_INDEX_URL"; \
    if [ -z "$index" ] && [ "$VARIANT" = "cpu" ]; then index="https://download.pytorch.org/whl/cpu"; \
    elif [ -z "$index" ]; then index="https://pypi.org/simple"; fi \
 && pip install --upgrade "pip>=24" \
 && pip install "torch==${TORCH_VERSION}" --index-url "$index"

WORKDIR /src
# The product only: the worker and the message schemas (the default model is package data of
# worker/, in worker/default_model/). training/, bench/, testing/, scripts/ and tests/ stay out.
COPY pyproject.toml README.md ./
COPY worker/ worker/
COPY schemas/ schemas/
# Non-editable install: the worker package and its data (the default model) land in site-packages.
# training/ is not in the image, so the `moderation-train` console script would be a dead link.
# The CPU image also serves the bundled int8 ONNX graph (auto picks it where the CPU has no native
# bf16; see worker/backends/runtime.py); the GPU image serves with torch. The extra's floor is in
# pyproject.toml, as for every other runtime dependency. Both carry the otel extra, so that
# MODERATION_OTEL=1 works in the image (it is imported only then).
# hadolint ignore=DL3013
RUN if [ "$VARIANT" = "cpu" ]; then pip install ".[onnx,otel]"; else pip install ".[otel]"; fi \
 && rm -f "$VIRTUAL_ENV/bin/moderation-train" \
 && python -m compileall -q "$VIRTUAL_ENV" \
 && test -d "$(python -c 'import worker, pathlib; print(pathlib.Path(worker.__file__).parent / "default_model")')" \
 && ! python -c 'import training' 2>/dev/null

# ---------------------------------------------------------------- runtime
FROM base AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="moderation-worker" \
      org.opencontainers.image.description="Kafka comments -> micro-batched BERT-Tiny multi-label toxicity scores" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.moderation.variant="${VARIANT}"

RUN groupadd --system --gid 10001 moderation \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin moderation

COPY --from=builder /opt/venv /opt/venv

# Read-only root filesystem: every cache points at /tmp, nothing is fetched from the Hub at run
# time (set HF_HUB_OFFLINE=0 to allow MODERATION_MODEL=<hub id>).
ENV HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HOME=/tmp/.cache/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TORCHINDUCTOR_CACHE_DIR=/tmp/.cache/torchinductor \
    MODERATION_DEVICE=auto \
    MODERATION_METRICS_PORT=9000

# Smoke test at build time: the console script exists and the baked-in model loads (on CPU).
RUN MODERATION_DEVICE=cpu moderation-worker info --json --load > /dev/null \
 && rm -rf /tmp/* /tmp/.[!.]*

USER 10001:10001
WORKDIR /tmp
EXPOSE 9000
VOLUME ["/tmp"]
HEALTHCHECK --interval=30s --timeout=3s --start-period=60s \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MODERATION_METRICS_PORT', '9000'), timeout=2)"]
# tini as PID 1 forwards SIGTERM to the worker, which then drains within MODERATION_SHUTDOWN_GRACE_S.
ENTRYPOINT ["/usr/bin/tini", "--", "moderation-worker"]
CMD ["run"]
