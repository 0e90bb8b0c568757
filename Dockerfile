# syntax=docker/dockerfile:1
#
# Streaming moderation worker image.
#
#   docker build -t moderation-worker:cuda .                          # default: CUDA runtime
#   docker build --build-arg VARIANT=cpu -t moderation-worker:cpu .   # CPU, ONNX Runtime, no torch
#   docker build --build-arg VARIANT=cpu-torch ...                    # CPU, with torch as well
#   podman build --format docker --build-arg VARIANT=cpu ...          # podman/buildah: --format
#       docker, else HEALTHCHECK is dropped and SHELL ignored (RUN loses pipefail)
#   make image                                                        # the CPU image, either engine
#
# Build arguments and secrets (deploy/README.md, "Build the image"):
#   VARIANT            cuda | cpu | cpu-torch. cpu serves through ONNX Runtime and OpenVINO
#                      (its CPU plugin; auto measures both at the first start) and has no torch
#                      (nor transformers): the bundled model and any artifact exported with
#                      `moderation-train export --onnx`; an artifact without an ONNX graph is
#                      refused at start. cpu-torch adds the CPU build of torch (the torch
#                      backend, artifacts without an ONNX graph); cuda: torch with CUDA.
#   PYTHON_IMAGE       the cpu variant's base (a Debian-like image with python3 >= 3.11 + venv)
#   CUDA_IMAGE         the cuda variant's base
#   TORCH_VERSION      the torch version (the Makefile's TORCH_SPEC; a test checks they agree)
#   TORCH_INDEX_URL    where torch comes from (default: the PyTorch CPU index for cpu-torch, PyPI
#                      for cuda); cpu installs no torch
#   --build-context wheelhouse=DIR   a local directory of wheels for torch (no index reached)
#   --secret id=pip_ca,src=FILE      an extra CA bundle (TLS-intercepting proxy), used by pip in
#                                    the builder only, never stored in a layer
#   VERSION, REVISION  the OCI labels org.opencontainers.image.version / .revision
#
# Everything else comes from requirements/image.txt (cpu) or requirements/image-torch.txt
# (cpu-torch, cuda), made by `make lock`, installed with --require-hashes: two builds of one
# commit install the same packages.
#
# The bundled default model (worker/default_model/, package data) is baked in; another model can
# be mounted read-only and selected with MODERATION_MODEL=/models/<dir>.
# The image runs as a non-root user (uid 10001) and works with a read-only root filesystem:
# everything it writes goes to /tmp (mount an emptyDir there in Kubernetes).

ARG VARIANT=cuda
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04

# ---------------------------------------------------------------- local wheelhouse (optional)
# Empty unless the build is given `--build-context wheelhouse=<dir of wheels>`.
FROM scratch AS wheelhouse

# ---------------------------------------------------------------- base images, one per variant
FROM ${PYTHON_IMAGE} AS base-cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# tini and CA certificates, unless the base already has them (the `make image-base` image does).
# hadolint ignore=DL3008
RUN if ! command -v tini >/dev/null || [ ! -e /etc/ssl/certs/ca-certificates.crt ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends tini ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi

# the CPU base with torch installed on it (by the builder)
FROM base-cpu AS base-cpu-torch

FROM ${CUDA_IMAGE} AS base-cuda
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Ubuntu 24.04 ships Python 3.12; torch's CUDA wheels bring their own CUDA user-space libraries,
# the base image provides the matching runtime layout and NVIDIA container-toolkit env.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv tini ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------- common base
# hadolint ignore=DL3006
FROM base-${VARIANT} AS base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# ---------------------------------------------------------------- builder: venv with the app
FROM base AS builder
ARG VARIANT
# Same torch as the tests run with (TORCH_SPEC in the Makefile; tests/deploy checks it).
ARG TORCH_VERSION=2.13.0
# Empty: cpu-torch -> the PyTorch CPU wheel index (no CUDA libraries, a much smaller image);
# cuda -> PyPI, whose Linux torch wheels are CUDA builds bundling their CUDA libraries.
# Set it to a mirror, or e.g. https://download.pytorch.org/whl/cu128 for another CUDA version.
# With a wheelhouse (--build-context wheelhouse=DIR) holding a torch wheel, no index is used.
ARG TORCH_INDEX_URL=""
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python3 -m venv "$VIRTUAL_ENV"
WORKDIR /src
COPY requirements/image.txt requirements/image-torch.txt requirements/
# 1. the variant's lock, hash-checked, nothing resolved (the venv's own pip does it: no upgrade
#    from the index). An extra CA (secret pip_ca) is appended to the system bundle for this step
#    only.
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then \
      cat /etc/ssl/certs/ca-certificates.crt /run/secrets/pip_ca > /tmp/ca.pem \
      && export PIP_CERT=/tmp/ca.pem; \
    fi \
 && lock=requirements/image-torch.txt \
 && if [ "$VARIANT" = "cpu" ]; then lock=requirements/image.txt; fi \
 && pip install --require-hashes --no-deps -r "$lock" \
 && rm -f /tmp/ca.pem
# 2. torch, pinned, per variant (none for cpu). From the wheelhouse when it has one (no index
#    at all), else from the index. The CPU build has no dependencies beyond the lock's
#    (--no-deps; `pip check` below proves it); PyPI's CUDA build pins its nvidia-* libraries
#    exactly.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheelhouse,target=/wheelhouse \
    --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then \
      cat /etc/ssl/certs/ca-certificates.crt /run/secrets/pip_ca > /tmp/ca.pem \
      && export PIP_CERT=/tmp/ca.pem; \
    fi \
 && deps=(--no-deps); index="$TORCH_INDEX_URL" \
 && if [ -z "$index" ] && [ "$VARIANT" != "cuda" ]; then index="https://download.pytorch.org/whl/cpu"; \
    elif [ -z "$index" ]; then index="https://pypi.org/simple"; deps=(); fi \
 && if compgen -G "/wheelhouse/torch-${TORCH_VERSION}*.whl" >/dev/null; then \
      source=(--no-index --find-links /wheelhouse); \
    else source=(--index-url "$index"); fi \
 && if [ "$VARIANT" = "cpu" ]; then echo "VARIANT=cpu: no torch (ONNX Runtime serves)"; \
    else pip install "${deps[@]}" "${source[@]}" "torch==${TORCH_VERSION}"; fi \
 && rm -f /tmp/ca.pem

# The product only: the worker and the message schemas (the default model is package data of
# worker/, in worker/default_model/). training/, bench/, testing/, scripts/ and tests/ stay out.
COPY pyproject.toml README.md ./
COPY worker/ worker/
COPY schemas/ schemas/
# 3. the project itself: non-editable, no dependencies (all came from the lock), no build
#    isolation (setuptools is in the lock). training/ is not in the image, so the
#    `moderation-train` console script would be a dead link. Every variant serves the bundled
#    int8 ONNX graph through ONNX Runtime where auto picks it (worker/backends/runtime.py; the
#    only backend of cpu); the locks carry the otel extra, so MODERATION_OTEL=1 works in all.
# 4. what serving never loads comes out (issue 25, defect 6): torch's C++ headers, CMake files,
#    test binaries and test libraries (the worker does not compile extensions or use
#    torch.compile); of OpenVINO (cpu), all but the CPU plugin and the ONNX frontend: the GPU
#    and NPU plugins with the GPU's kernel cache (cache.json), the other frontends (IR, PyTorch,
#    TensorFlow, TFLite, Paddle, JAX, GGUF), headers and tools (ovc, benchmark_app), 80 MB of
#    its 180 MB. cpu: the build backend (setuptools, wheel: 10 MB) goes too, once the
#    project is installed and `pip check`ed (torch needs setuptools, so the torch variants keep
#    it), and the build checks that torch and transformers are really absent.
# 5. bytecode, compiled for the interpreter of the image; torch ships a few modules written for
#    newer Pythons (torch/testing/_internal/py312_intrinsics.py), which are left out of
#    compilation, never imported by the worker (issue 25, defect 1).
RUN pip install --no-deps --no-build-isolation . \
 && pip check \
 && rm -f "$VIRTUAL_ENV/bin/moderation-train" \
 && site="$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
 && rm -rf "$site/torch/include" "$site/torch/share" "$site/torch/test" \
      "$site"/torch/bin/test_* "$site"/torch/bin/*Test "$site"/torch/bin/protoc* \
      "$site"/torch/lib/libjitbackend_test.so "$site"/torch/lib/libtorchbind_test.so \
      "$site"/torch/lib/libbackend_with_compiler.so "$site"/torch/lib/libaoti_custom_ops.so \
 && ov="$site/openvino" \
 && rm -rf "$ov/include" "$ov/tools" "$ov"/frontend/{jax,paddle,pytorch,tensorflow} \
      "$ov"/libs/libopenvino_intel_{gpu,npu}_plugin.so "$ov/libs/cache.json" \
      "$ov"/libs/libopenvino_{gguf,ir,jax,paddle,pytorch,tensorflow,tensorflow_lite}_frontend.so.* \
 && python -m compileall -q -x '/torch/testing/_internal/py3[0-9]+_' "$VIRTUAL_ENV" \
 && test -d "$site/worker/default_model" \
 && ! python -c 'import training' 2>/dev/null \
 && if [ "$VARIANT" = "cpu" ]; then \
      pip uninstall -y -q setuptools wheel \
      && python -c 'import onnxruntime, openvino, worker.cli' \
      && ! python -c 'import torch' 2>/dev/null && ! python -c 'import transformers' 2>/dev/null; \
    else python -c 'import torch, transformers, onnxruntime, worker.cli'; fi

# ---------------------------------------------------------------- runtime
FROM base AS runtime
ARG VARIANT
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="moderation-worker" \
      org.opencontainers.image.description="Kafka comments -> micro-batched BERT-Tiny multi-label toxicity scores" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      io.moderation.variant="${VARIANT}"

# A regular (not --system) account: uid 10001 is above SYS_UID_MAX, which --system warns about.
RUN groupadd --gid 10001 moderation \
 && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
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

# Smoke test at build time: the console script exists and the baked-in model loads (on CPU);
# cpu: through the trimmed OpenVINO too (compiled and warmed up on every bucket shape).
RUN MODERATION_DEVICE=cpu moderation-worker info --json --load > /dev/null \
 && if [ "$VARIANT" = "cpu" ]; then \
      MODERATION_DEVICE=cpu MODERATION_BACKEND=openvino moderation-worker info --json --load \
      > /dev/null; \
    fi \
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
